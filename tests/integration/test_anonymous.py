"""/v2/anonymous/...: registries the vendor gives away, without a license, rate-limited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import skopeo
from tests.support.client import basic
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

LICENSE = "lic-anon-test-0123456789abcdef"
BURST = 40


def _server(tmp_path_factory: pytest.TempPathFactory, upstream_anon: Registry, upstream_basic: Registry) -> Pullgate:
    teams = [
        {
            "name": "anon",
            "apps": [{"slug": "anon"}],
            "registries": [
                {
                    "slug": "public",
                    "provider": "other",
                    "endpoint": "public.test",
                    "url": upstream_anon.url,
                    "insecure": True,
                    "allow_anonymous": True,
                },
                {
                    "slug": "private",
                    "provider": "other",
                    "endpoint": "private.test",
                    "url": upstream_basic.url,
                    "insecure": True,
                    "username": "vendor",
                    "password_env": "ANON_UPSTREAM_PW",
                },
            ],
            "customers": [{"name": "C", "app": "anon", "license_id_env": "ANON_LICENSE"}],
        }
    ]
    env = {"ANON_LICENSE": LICENSE, "ANON_UPSTREAM_PW": upstream_basic.password or ""}
    settings = {"anonymous": {"rate_per_minute": 6, "burst": BURST}}
    return Pullgate(tmp_path_factory.mktemp("anon"), teams, env=env, settings=settings).start()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream_anon: Registry, upstream_basic: Registry
) -> Iterator[Pullgate]:
    srv = _server(tmp_path_factory, upstream_anon, upstream_basic)
    yield srv
    srv.stop()


@pytest.fixture
def throttled(
    tmp_path_factory: pytest.TempPathFactory, upstream_anon: Registry, upstream_basic: Registry
) -> Iterator[Pullgate]:
    """A server of its own: the test spends the whole burst, which the others then lack."""
    srv = _server(tmp_path_factory, upstream_anon, upstream_basic)
    yield srv
    srv.stop()


def test_skopeo_pulls_anonymously(server: Pullgate, upstream_anon: Registry, tmp_path: Path):
    img = upstream_anon.images["index"]
    res = skopeo.copy(f"docker://{server.host}/anonymous/public/{img.repo}:{img.tag}", tmp_path / "a", all=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "a" / "manifest.json").read_bytes() == img.manifest
    # By endpoint too.
    res = skopeo.inspect_raw(f"docker://{server.host}/anonymous/public.test/{img.repo}:{img.tag}")
    assert res.returncode == 0 and res.stdout.encode() == img.manifest


async def test_only_registries_that_allow_it(server: Pullgate, upstream_basic: Registry):
    img = upstream_basic.images["oci"]
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"{server.url}/v2/token", params={"scope": f"repository:anonymous/private/{img.repo}:pull"}
        ) as r:
            token = (await r.json())["token"]
        async with s.get(
            f"{server.url}/v2/anonymous/private/{img.repo}/manifests/v1",
            headers={"Authorization": f"Bearer {token}", "Accept": img.media_type},
        ) as r:
            assert r.status == 404 and (await r.json())["errors"][0]["code"] == "NAME_UNKNOWN"
        # An anonymous token opens nothing on the licensed path, and none is issued for it.
        async with s.get(
            f"{server.url}/v2/proxy/anon/private/{img.repo}/manifests/v1",
            headers={"Authorization": f"Bearer {token}", "Accept": img.media_type},
        ) as r:
            assert r.status == 401
        async with s.get(
            f"{server.url}/v2/token", params={"scope": f"repository:proxy/anon/private/{img.repo}:pull"}
        ) as r:
            assert r.status == 401
        # The licensed path to the same registry works, with the license.
        async with s.get(
            f"{server.url}/v2/proxy/anon/private/{img.repo}/manifests/v1",
            headers={"Authorization": basic(LICENSE), "Accept": img.media_type},
        ) as r:
            assert r.status == 200


async def test_rate_limit_per_address(throttled: Pullgate, upstream_anon: Registry):
    server = throttled
    img = upstream_anon.images["oci"]
    url = f"{server.url}/v2/anonymous/public/{img.repo}/manifests/v1"
    statuses = []
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"{server.url}/v2/token", params={"scope": f"repository:anonymous/public/{img.repo}:pull"}
        ) as r:
            token = (await r.json())["token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": img.media_type}
        retry_after = None
        for _ in range(BURST + 5):
            async with s.head(url, headers=headers) as r:
                statuses.append(r.status)
                if r.status == 429:
                    retry_after = r.headers["Retry-After"]
        async with s.get(url, headers=headers) as r:
            body = await r.json()
    assert 429 in statuses and statuses.count(200) <= BURST
    assert retry_after is not None and int(retry_after) >= 1
    assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
