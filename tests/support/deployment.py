"""The session's pullgate deployment: one `pullgate serve` configured, as an operator
would, in front of the upstream registries of tests.support.fixtures. A pytest plugin
(tests/conftest.py lists it in pytest_plugins); only integration tests ask for it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.canaries import assert_no_secrets
from tests.support.faults import BreakingFront, Sentinel
from tests.support.procs import free_port
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry


def _license(tag: str) -> str:
    return f"lic-{tag}-{secrets.token_hex(12)}"


@dataclass
class Deployment:
    """pullgate in front of the test upstreams, and everything a test needs to know."""

    server: Pullgate
    licenses: dict[str, str]
    upstreams: dict[str, Registry]
    sentinel: Sentinel
    front: BreakingFront
    canaries: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    def assert_clean(self, text: str | bytes, where: str) -> None:
        """No vendor password and no license ID may appear in `text`."""
        assert_no_secrets(text, self.canaries, where)


@pytest.fixture(scope="session")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_basic: Registry,
    upstream_token: Registry,
    upstream_anon: Registry,
) -> Iterator[Deployment]:
    licenses = {name: _license(name) for name in ("valid", "expired", "revoke", "other-app", "globex", "sigterm")}
    sentinel = Sentinel()
    front = BreakingFront(upstream_anon.url, upstream_anon.images["big"].blobs[-1][0])
    env = {
        "PGT_BASIC_PW": upstream_basic.password or "",
        "PGT_TOKEN_PW": upstream_token.password or "",
        "PGT_API_TOKEN": secrets.token_hex(16),
        **{f"PGT_LIC_{k.upper().replace('-', '_')}": v for k, v in licenses.items()},
    }

    def customer(key: str, app: str, **extra: str) -> dict[str, str]:
        return {
            "name": f"Customer {key}",
            "email": f"{key}@example.test",
            "app": app,
            "license_id_env": f"PGT_LIC_{key.upper().replace('-', '_')}",
            **extra,
        }

    teams = [
        {
            "name": "acme",
            "api_tokens": [{"token_env": "PGT_API_TOKEN"}],
            "apps": [{"slug": "acme", "name": "Acme"}, {"slug": "acme-other"}],
            "registries": [
                {
                    "slug": "vendor-basic",
                    "provider": "other",
                    "endpoint": "registry.basic.test",
                    "url": upstream_basic.url,
                    "insecure": True,
                    "username": "vendor",
                    "password_env": "PGT_BASIC_PW",
                },
                {
                    "slug": "vendor-token",
                    "provider": "other",
                    "endpoint": "registry.token.test",
                    "url": upstream_token.url,
                    "insecure": True,
                    "username": "vendor",
                    "password_env": "PGT_TOKEN_PW",
                },
                {
                    "slug": "vendor-anon",
                    "provider": "other",
                    "endpoint": "registry.anon.test",
                    "url": upstream_anon.url,
                    "insecure": True,
                },
                {
                    "slug": "vendor-breaking",
                    "provider": "other",
                    "endpoint": "registry.breaking.test",
                    "url": front.url,
                    "insecure": True,
                },
                # Nothing listens there: connection refused.
                {
                    "slug": "vendor-down",
                    "provider": "other",
                    "endpoint": "registry.down.test",
                    "url": f"http://127.0.0.1:{free_port()}",
                    "insecure": True,
                },
                # Linked to the other app only: acme's customers must not reach it.
                {
                    "slug": "other-only",
                    "provider": "other",
                    "endpoint": "registry.other.test",
                    "url": sentinel.url,
                    "insecure": True,
                    "apps": ["acme-other"],
                },
            ],
            "customers": [
                customer("valid", "acme"),
                customer("expired", "acme", expires_at="2020-01-01T00:00:00Z"),
                customer("revoke", "acme"),
                customer("sigterm", "acme"),
                customer("other-app", "acme-other"),
            ],
        },
        {
            "name": "globex",
            "apps": [{"slug": "globex"}],
            "registries": [
                {
                    "slug": "globex-reg",
                    "provider": "other",
                    "endpoint": "registry.globex.test",
                    "url": sentinel.url,
                    "insecure": True,
                },
            ],
            "customers": [customer("globex", "globex")],
        },
    ]
    server = Pullgate(tmp_path_factory.mktemp("pullgate"), teams, env=env).start()
    dep = Deployment(
        server=server,
        licenses=licenses,
        upstreams={"vendor-basic": upstream_basic, "vendor-token": upstream_token, "vendor-anon": upstream_anon},
        sentinel=sentinel,
        front=front,
        canaries=[p for p in (upstream_basic.password, upstream_token.password) if p] + list(licenses.values()),
    )
    try:
        yield dep
    finally:
        server.stop()
        front.stop()
        sentinel.stop()
    # Over the whole run: not one secret in the proxy's own output.
    dep.assert_clean(server.log_text(), "the proxy's log")


@dataclass
class ConformanceTarget:
    namespace: str
    tag: str
    manifest_digest: str
    blob_digest: str


@dataclass
class PullProxy:
    url: str
    license_id: str
    conformance: ConformanceTarget


@pytest.fixture(scope="session")
def pull_proxy(deployment: Deployment, upstream_basic: Registry) -> PullProxy:
    img = upstream_basic.images["oci"]
    return PullProxy(
        url=deployment.url,
        license_id=deployment.licenses["valid"],
        conformance=ConformanceTarget(
            namespace=f"proxy/acme/vendor-basic/{img.repo}",
            tag=img.tag or "v1",
            manifest_digest=img.digest,
            blob_digest=img.blobs[-1][0],
        ),
    )
