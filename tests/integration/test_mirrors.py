"""Harbor and Nexus as pull-through caches in front of the proxy: the scope in the
challenge, the token dance, tags/list, and an authenticated /v2/_catalog."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.support.client import basic
from tests.support.deployment import Deployment

REPO = "proxy/acme/vendor-basic/vendor/docker"


def _challenge(header: str) -> dict[str, str]:
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


async def test_harbor_style_proxy_cache_flow(deployment: Deployment):
    img = deployment.upstreams["vendor-basic"].images["docker"]
    lic = deployment.licenses["valid"]
    async with aiohttp.ClientSession() as s:
        # Harbor pings /v2/, then asks for the manifest and follows the challenge it gets.
        async with s.get(f"{deployment.url}/v2/") as r:
            assert r.status == 401
        async with s.head(f"{deployment.url}/v2/{REPO}/manifests/v1") as r:
            assert r.status == 401
            ch = _challenge(r.headers["WWW-Authenticate"])
        assert ch["scope"] == f"repository:{REPO}:pull"
        async with s.get(
            ch["realm"],
            params={"service": ch["service"], "scope": ch["scope"]},
            headers={"Authorization": basic(lic, user="harbor-robot")},
        ) as r:
            token = (await r.json())["token"]
        bearer = {"Authorization": f"Bearer {token}", "Accept": img.media_type}
        async with s.head(f"{deployment.url}/v2/{REPO}/manifests/v1", headers=bearer) as r:
            assert r.status == 200
            digest = r.headers["Docker-Content-Digest"]
        async with s.get(f"{deployment.url}/v2/{REPO}/manifests/{digest}", headers=bearer) as r:
            assert await r.read() == img.manifest
        for blob, size in img.blobs:
            async with s.get(f"{deployment.url}/v2/{REPO}/blobs/{blob}", headers=bearer) as r:
                assert r.status == 200 and len(await r.read()) == size
        async with s.get(f"{deployment.url}/v2/{REPO}/tags/list", headers=bearer) as r:
            assert (await r.json())["tags"] == ["v1"]


async def test_nexus_style_catalog(deployment: Deployment):
    lic = deployment.licenses["valid"]
    async with aiohttp.ClientSession() as s:
        # Pull something so the catalog has seen it (the pull log is written off the request path).
        async with s.head(
            f"{deployment.url}/v2/{REPO}/manifests/v1", headers={"Authorization": basic(lic), "Accept": "*/*"}
        ) as r:
            assert r.status == 200
        async with s.get(f"{deployment.url}/v2/_catalog") as r:
            assert r.status == 401
            assert _challenge(r.headers["WWW-Authenticate"])["scope"] == "registry:catalog:*"
        names: list[str] = []
        for _ in range(60):
            async with s.get(f"{deployment.url}/v2/_catalog", headers={"Authorization": basic(lic)}) as r:
                assert r.status == 200
                names = (await r.json())["repositories"]
            if REPO in names:
                break
            await asyncio.sleep(0.25)
        assert REPO in names
        assert all(n.startswith("proxy/acme/") for n in names), names  # only the license's app
        # Token flow with the catalog scope, as Nexus does it.
        async with s.get(
            f"{deployment.url}/v2/token", params={"scope": "registry:catalog:*"}, headers={"Authorization": basic(lic)}
        ) as r:
            token = (await r.json())["token"]
        async with s.get(f"{deployment.url}/v2/_catalog?n=1", headers={"Authorization": f"Bearer {token}"}) as r:
            page = await r.json()
            assert r.status == 200 and len(page["repositories"]) == 1
            if len(names) > 1:
                assert r.headers["Link"].startswith("</v2/_catalog?")
        # A token for one repository does not open the catalog.
        async with s.get(
            f"{deployment.url}/v2/token",
            params={"scope": f"repository:{REPO}:pull"},
            headers={"Authorization": basic(lic)},
        ) as r:
            repo_token = (await r.json())["token"]
        async with s.get(f"{deployment.url}/v2/_catalog", headers={"Authorization": f"Bearer {repo_token}"}) as r:
            assert r.status == 401
        # Another app's license sees none of acme's repositories.
        async with s.get(
            f"{deployment.url}/v2/_catalog", headers={"Authorization": basic(deployment.licenses["other-app"])}
        ) as r:
            assert all(not n.startswith("proxy/acme/") for n in (await r.json())["repositories"])
