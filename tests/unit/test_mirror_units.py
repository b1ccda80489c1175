"""Cluster mirrors by original image names (issue 12), in process: which registry a mirrored
name resolves to (with and without containerd's `?ns=`), and the snippets the portal shows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from proxy.admin.mirrors import Mirror, default_hosts_toml
from proxy.oci.errors import OCIError
from proxy.oci.grammar import split_proxy_name
from proxy.pull.resolve import resolve
from proxy.store.models import Registry


def _registry(slug: str, endpoint: str, provider: str = "other") -> Registry:
    return Registry(
        id=f"id-{slug}",
        team_id="team",
        slug=slug,
        provider=provider,
        endpoint=endpoint,
        url=f"https://{endpoint}",
        insecure=False,
        username=None,
        secret_sealed=None,
    )


VENDOR = _registry("vendor", "registry.vendor.example")
GHCR = _registry("gh", "ghcr.io", "ghcr")
HUB = _registry("hub", "index.docker.io", "dockerhub")
REGISTRIES = [VENDOR, GHCR, HUB]


def _resolve(name: str, ns: str | None = None, registries: list[Registry] = REGISTRIES) -> tuple[str, str]:
    registry, repo = resolve(registries, split_proxy_name(name), ns)
    return registry.slug, repo


@pytest.mark.parametrize(
    ("name", "ns", "want"),
    [
        # A host's own hosts.toml: `/v2/proxy/<app>/<registry>` holds the registry; ns agrees.
        ("proxy/app/vendor/app/api", "registry.vendor.example", ("vendor", "app/api")),
        ("proxy/app/vendor/app/api", None, ("vendor", "app/api")),
        ("proxy/app/hub/library/redis", "docker.io", ("hub", "library/redis")),
        ("proxy/app/registry.vendor.example/app/api", "registry.vendor.example", ("vendor", "app/api")),
        # certs.d/_default: `/v2/proxy/<app>` only; ns names the registry.
        ("proxy/app/app/api", "registry.vendor.example", ("vendor", "app/api")),
        ("proxy/app/library/redis", "docker.io", ("hub", "library/redis")),
        ("proxy/app/org/tool", "ghcr.io", ("gh", "org/tool")),
        ("proxy/app/tool", "GHCR.IO", ("gh", "tool")),
        # ns names another registry of the app than the first component: ns wins (the image's host).
        ("proxy/app/vendor/x", "ghcr.io", ("gh", "vendor/x")),
        # ns names no registry of the app: the name alone decides, as without ns.
        ("proxy/app/vendor/app/api", "mirror.customer.example", ("vendor", "app/api")),
        # Without ns, a name that is no registry is a Docker Hub namespace, as before.
        ("proxy/app/library/redis", None, ("hub", "library/redis")),
    ],
)
def test_mirrored_names_resolve(name: str, ns: str | None, want: tuple[str, str]):
    assert _resolve(name, ns) == want


def test_an_image_of_a_host_the_app_does_not_serve_is_never_guessed_onto_docker_hub():
    """`quay.io/org/tool` through a `_default` mirror must not become Docker Hub's org/tool."""
    with pytest.raises(OCIError) as err:
        _resolve("proxy/app/org/tool", "quay.io")
    assert err.value.code.value == "NAME_UNKNOWN"
    with pytest.raises(OCIError):
        _resolve("proxy/app/app/api", "registry.vendor.example", [GHCR, HUB])


PROVIDERS = [
    ("ecr", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
    ("dockerhub", "index.docker.io", "docker.io"),
    ("ghcr", "ghcr.io", "ghcr.io"),
    ("gar", "us-docker.pkg.dev", "us-docker.pkg.dev"),
    ("quay", "quay.io", "quay.io"),
    ("other", "registry.vendor.example:5000", "registry.vendor.example:5000"),
]


@pytest.mark.parametrize(("provider", "endpoint", "image_host"), PROVIDERS)
def test_containerd_hosts_toml(provider: str, endpoint: str, image_host: str):
    mirror = Mirror("proxy.example.com", "myapp", "vendor-reg", endpoint)
    text = mirror.hosts_toml()
    assert text.startswith(f"# /etc/containerd/certs.d/{image_host}/hosts.toml\n")
    doc = tomllib.loads(text)
    upstream = "registry-1.docker.io" if image_host == "docker.io" else image_host
    assert doc["server"] == f"https://{upstream}"
    assert doc["host"] == {
        "https://proxy.example.com/v2/proxy/myapp/vendor-reg": {
            "capabilities": ["pull", "resolve"],
            "override_path": True,
        }
    }


@pytest.mark.parametrize(("provider", "endpoint", "image_host"), PROVIDERS)
def test_registries_conf(provider: str, endpoint: str, image_host: str):
    doc = tomllib.loads(Mirror("proxy.example.com", "myapp", "vendor-reg", endpoint).registries_conf())
    assert doc == {
        "registry": [
            {
                "prefix": image_host,
                "location": image_host,
                "mirror": [{"location": "proxy.example.com/proxy/myapp/vendor-reg"}],
            }
        ]
    }
    insecure = tomllib.loads(Mirror("127.0.0.1:8080", "a", "r", endpoint, "http").registries_conf(insecure=True))
    assert insecure["registry"][0]["mirror"] == [{"location": "127.0.0.1:8080/proxy/a/r", "insecure": True}]


def test_default_hosts_toml_has_no_registry_in_its_url():
    text = default_hosts_toml("proxy.example.com", "myapp")
    assert text.startswith("# /etc/containerd/certs.d/_default/hosts.toml\n")
    doc = tomllib.loads(text)
    assert "server" not in doc  # containerd's default: the image's own host, after the mirror
    assert doc["host"] == {
        "https://proxy.example.com/v2/proxy/myapp": {"capabilities": ["pull", "resolve"], "override_path": True}
    }


README_EXAMPLES = [
    ("ecr", "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
    ("hub", "docker.io"),
    ("ghcr", "ghcr.io"),
    ("gar", "us-docker.pkg.dev"),
    ("quay", "quay.io"),
    ("vendor", "registry.vendor.example"),
]


@pytest.mark.parametrize(("slug", "endpoint"), README_EXAMPLES)
def test_the_readme_shows_what_the_portal_renders(slug: str, endpoint: str):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    mirror = Mirror("proxy.vendor.example", "myapp", slug, endpoint)
    assert mirror.hosts_toml() in readme
    assert mirror.registries_conf() in readme
    assert default_hosts_toml("proxy.vendor.example", "myapp") in readme
