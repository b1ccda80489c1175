"""Hole 5: /v2/anonymous/... never reaches more than a license would. The apps'
image allowlists bound it, and a registry's `anonymousRepositories` narrows it;
a refused name is 404 NAME_UNKNOWN before any request goes upstream."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.hostile import OCI_MANIFEST, HostileRegistry, image
from tests.support.pullgate import Pullgate

LICENSE = "lic-anonal-test-0123456789abcdef"
API_TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    reg = HostileRegistry()
    for repo in ("vendor/allowed", "vendor/secret", "vendor/public", "vendor/other"):
        reg.serve_image(image(repo, "v1", repo.replace("/", "-")))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hostile: HostileRegistry) -> Iterator[Pullgate]:
    teams = [
        {
            "name": "anonal",
            "api_tokens": [{"token_env": "ANONAL_TOKEN"}],
            "apps": [{"slug": "limited"}, {"slug": "open"}],
            "registries": [
                # Serves only the app with an allowlist: anonymous pulls are bounded by it.
                {
                    "slug": "pub",
                    "provider": "other",
                    "endpoint": "pub.test",
                    "url": hostile.url,
                    "insecure": True,
                    "allow_anonymous": True,
                    "apps": ["limited"],
                },
                # Serves every app (one allows everything), but anonymously only vendor/public.
                {
                    "slug": "narrow",
                    "provider": "other",
                    "endpoint": "narrow.test",
                    "url": hostile.url,
                    "insecure": True,
                    "allow_anonymous": True,
                    "anonymous_repositories": ["vendor/public"],
                },
            ],
            "customers": [{"name": "C", "app": "limited", "license_id_env": "ANONAL_LICENSE"}],
        }
    ]
    env = {"ANONAL_LICENSE": LICENSE, "ANONAL_TOKEN": API_TOKEN}
    srv = Pullgate(tmp_path_factory.mktemp("anonal"), teams, env=env).start()
    yield srv
    srv.stop()


async def _api(server: Pullgate, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(
            method, f"{server.admin_url}/vendor/v3{path}", json=body, headers={"Authorization": API_TOKEN}
        ) as r:
            return r.status, await r.json()


@pytest.fixture(scope="module")
async def allowlisted(server: Pullgate) -> None:
    status, body = await _api(server, "PATCH", "/app/limited", {"imageAllowlist": ["vendor/allowed*"]})
    assert status == 200, body


async def _anonymous(server: Pullgate, name: str, ref: str = "v1", method: str = "GET") -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/v2/token", params={"scope": f"repository:{name}:pull"}) as r:
            token = (await r.json())["token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST}
        async with s.request(method, f"{server.url}/v2/{name}/manifests/{ref}", headers=headers) as r:
            if r.status == 200 or method == "HEAD":
                return r.status, None
            return r.status, (await r.json())["errors"][0]["code"]


@pytest.mark.usefixtures("allowlisted")
async def test_the_apps_allowlist_bounds_anonymous_pulls(server: Pullgate, hostile: HostileRegistry):
    assert await _anonymous(server, "anonymous/pub/vendor/allowed") == (200, None)
    seen = len(hostile.requests_for("vendor/secret"))
    for method in ("GET", "HEAD"):
        assert (await _anonymous(server, "anonymous/pub/vendor/secret", method=method))[0] == 404
    assert await _anonymous(server, "anonymous/pub/vendor/secret") == (404, "NAME_UNKNOWN")
    # Refused before any upstream I/O: the registry never heard of it.
    assert len(hostile.requests_for("vendor/secret")) == seen
    # Exactly what a license of that app gets.
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"{server.url}/v2/proxy/limited/pub/vendor/secret/manifests/v1",
            headers={"Authorization": basic(LICENSE), "Accept": OCI_MANIFEST},
        ) as r:
            assert r.status == 404


async def test_anonymous_repositories_narrow_a_registry(server: Pullgate, hostile: HostileRegistry):
    assert await _anonymous(server, "anonymous/narrow/vendor/public") == (200, None)
    seen = len(hostile.requests_for("vendor/other"))
    assert await _anonymous(server, "anonymous/narrow/vendor/other") == (404, "NAME_UNKNOWN")
    assert len(hostile.requests_for("vendor/other")) == seen


async def test_the_vendor_api_sets_anonymous_repositories(server: Pullgate, hostile: HostileRegistry):
    status, body = await _api(server, "GET", "/external_registry/narrow")
    assert status == 200 and body["external_registry"]["anonymousRepositories"] == ["vendor/public"]
    status, body = await _api(server, "PUT", "/external_registry/narrow", {"anonymousRepositories": ["/bad", 3]})
    assert status == 400 and "anonymousRepositories" in str(body)
    status, body = await _api(server, "PUT", "/external_registry/narrow", {"anonymousRepositories": ["vendor/o*"]})
    assert status == 200 and body["external_registry"]["anonymousRepositories"] == ["vendor/o*"]
    try:
        assert await _anonymous(server, "anonymous/narrow/vendor/other") == (200, None)
        assert await _anonymous(server, "anonymous/narrow/vendor/public") == (404, "NAME_UNKNOWN")
    finally:
        status, _ = await _api(server, "PUT", "/external_registry/narrow", {"anonymousRepositories": ["vendor/public"]})
        assert status == 200
