"""Cluster mirror snippets: pull images by the names the vendor publishes them under.

A customer's manifests and charts name `registry.vendor.example/app/api:1.4`, not the proxy.
containerd (Kubernetes nodes) and podman/CRI-O can send such pulls to a mirror whose path
holds the rest of the proxy name, so the proxy sees `proxy/<app>/<registry>/app/api`:

- containerd: `/etc/containerd/certs.d/<image host>/hosts.toml` with a `[host]` whose URL
  ends in `/v2/proxy/<app>/<registry>` and `override_path = true` (the URL is then used
  as the API root, as is);
- containers-registries.conf: a `[[registry.mirror]]` whose location is
  `<proxy>/proxy/<app>/<registry>` (the repository is appended to it).

The same text is shown in the portal, written in the README, and used by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.upstream.endpoints import canonical_endpoint

# containerd names Docker Hub's images `docker.io/...` and fetches them from this host.
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Mirror:
    proxy_host: str  # host[:port] the customer reaches the proxy on
    app: str  # app slug
    registry: str  # registry slug
    endpoint: str  # the registry's host as written in image references
    scheme: str = "https"

    @property
    def image_host(self) -> str:
        """The host in the images' names: the directory name under certs.d, the registries.conf prefix."""
        return canonical_endpoint(self.endpoint)

    @property
    def location(self) -> str:
        return f"{self.proxy_host}/proxy/{self.app}/{self.registry}"

    def hosts_toml(self) -> str:
        upstream = DOCKER_HUB_API if self.image_host == "docker.io" else self.image_host
        return (
            f"# /etc/containerd/certs.d/{self.image_host}/hosts.toml\n"
            f'server = "https://{upstream}"\n'
            "\n"
            f'[host."{self.scheme}://{self.proxy_host}/v2/proxy/{self.app}/{self.registry}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            "  override_path = true\n"
        )

    def registries_conf(self, insecure: bool = False) -> str:
        return (
            "[[registry]]\n"
            f'prefix = "{self.image_host}"\n'
            f'location = "{self.image_host}"\n'
            "\n"
            "[[registry.mirror]]\n"
            f'location = "{self.location}"\n' + ("insecure = true\n" if insecure else "")
        )


def default_hosts_toml(proxy_host: str, app: str, scheme: str = "https") -> str:
    """One containerd file for every registry of the app: `certs.d/_default/hosts.toml`.
    containerd adds `?ns=<image host>` to mirrored requests, and the proxy resolves the
    registry from it (proxy.pull.resolve). Images of hosts the app has no registry for
    fail on the proxy (404) and containerd then goes to their own host."""
    return (
        "# /etc/containerd/certs.d/_default/hosts.toml\n"
        f'[host."{scheme}://{proxy_host}/v2/proxy/{app}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )
