"""Guessing licenses is slowed per client address: refused credentials spend a
bucket; when it is empty that address gets 429 until it refills."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

LICENSE = "lic-brute-0123456789abcdef0123"
BURST = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream_anon: Registry) -> Iterator[Pullgate]:
    teams = [
        {
            "name": "b",
            "apps": [{"slug": "b"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.test", "url": upstream_anon.url, "insecure": True}
            ],
            "customers": [{"name": "C", "app": "b", "license_id_env": "BRUTE_LICENSE"}],
        }
    ]
    srv = Pullgate(
        tmp_path_factory.mktemp("brute"),
        teams,
        env={"BRUTE_LICENSE": LICENSE},
        settings={"auth": {"failed_per_minute": 1, "failed_burst": BURST}},
    ).start()
    yield srv
    srv.stop()


async def test_failed_authentications_are_throttled_per_address(server: Pullgate):
    manifest = f"{server.url}/v2/proxy/b/up/vendor/oci/manifests/v1"
    token = f"{server.url}/v2/token?scope=repository:proxy/b/up/vendor/oci:pull"
    statuses = []
    async with aiohttp.ClientSession() as s:
        # A good license works, and does not spend the bucket.
        for _ in range(BURST + 3):
            async with s.get(token, headers={"Authorization": basic(LICENSE)}) as r:
                assert r.status == 200
        for i in range(BURST + 2):
            url = token if i % 2 else manifest
            async with s.get(url, headers={"Authorization": basic(f"lic-guess-{i:020d}")}) as r:
                statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
        assert statuses[:BURST] == [401] * BURST
        assert statuses[BURST:] == [429, 429]
        assert retry_after is not None and int(retry_after) >= 1
        # While throttled, this address is refused even with a good license: guesses stay slow.
        async with s.get(token, headers={"Authorization": basic(LICENSE)}) as r:
            assert r.status == 429
            assert (await r.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
        async with s.get(server.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'pullgate_auth_failures_total{reason="throttled"}' in text
