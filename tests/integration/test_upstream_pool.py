"""The upstream connection pool under pressure: one registry's slow streams cannot
take every connection (upstream.pool_per_registry), and idle upstream connections
close after upstream.keepalive_seconds even when the clients hung up (issue 8,
holes 4 and 7)."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from pathlib import Path

import aiohttp

from tests.support.client import basic
from tests.support.inward import TricklingRegistry
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

LICENSE = "lic-pool-" + secrets.token_hex(12)
OTHER_LICENSE = "lic-pool-other-" + secrets.token_hex(12)
THIRD_LICENSE = "lic-pool-third-" + secrets.token_hex(12)
ENV = {"POOL_LICENSE": LICENSE, "POOL_OTHER_LICENSE": OTHER_LICENSE, "POOL_THIRD_LICENSE": THIRD_LICENSE}


def _teams(registries: list[dict]) -> list[dict]:
    return [
        {
            "name": "pool",
            "apps": [{"slug": "pool"}],
            "registries": registries,
            "customers": [{"name": env, "app": "pool", "license_id_env": env} for env in ENV],
        }
    ]


def _registry(slug: str, url: str) -> dict:
    return {"slug": slug, "provider": "other", "endpoint": f"{slug}.test", "url": url, "insecure": True}


async def _hang_up(server: Pullgate, path: str, after: float) -> None:
    """Send a pull and hang up before the answer is read, as wrk's clients do at the end of a run."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: {basic(LICENSE)}\r\n"
        "Accept: application/vnd.oci.image.manifest.v1+json\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(after)
    writer.transport.abort()


async def test_idle_upstream_connections_close_after_keepalive(tmp_path: Path, upstream_anon: Registry):
    keepalive = 2.0
    server = Pullgate(
        tmp_path,
        _teams([_registry("anon", upstream_anon.url)]),
        env=ENV,
        settings={"upstream": {"keepalive_seconds": keepalive}},
    ).start()
    try:
        img = upstream_anon.images["oci"]
        path = f"/v2/proxy/pool/anon/{img.repo}/manifests/{img.digest}"
        port = int(upstream_anon.url.rsplit(":", 1)[1])

        def upstream_peers() -> int:
            return sum(1 for _, p in server.tcp_peers() if p == port)

        fds_before = server.open_fds()
        # Bounded load: 3 waves of 40 clients, each hanging up at a different moment.
        for _wave in range(3):
            await asyncio.gather(*(_hang_up(server, path, 0.002 * (i % 20)) for i in range(40)))
            peak = upstream_peers()
        assert peak > 0, "the load should have opened upstream connections"
        started = time.monotonic()
        # Closed within the keep-alive plus a margin, not twice the keep-alive or never.
        assert await asyncio.to_thread(server.wait_until, lambda: upstream_peers() == 0, keepalive + 1.5), (
            f"{upstream_peers()} upstream connections still open {time.monotonic() - started:.1f}s after the load"
        )
        assert await asyncio.to_thread(server.wait_until, lambda: server.open_fds() <= fds_before + 2, 5)
    finally:
        server.stop()


async def _metric(server: Pullgate, name: str, slug: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(server.admin_url + "/metrics") as r:
        text = await r.text()
    m = re.search(rf'^{name}{{registry="{slug}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_one_slow_registry_cannot_take_every_upstream_connection(tmp_path: Path, upstream_anon: Registry):
    slow = TricklingRegistry()
    server = Pullgate(
        tmp_path,
        _teams([_registry("slow", slow.url), _registry("anon", upstream_anon.url)]),
        env=ENV,
        settings={"upstream": {"pool_size": 3, "pool_per_registry": 2, "connect_timeout": 1}},
    ).start()
    auth = {"Authorization": basic(LICENSE)}
    blob = f"{server.url}/v2/proxy/pool/slow/vendor/app/blobs/sha256:{'b' * 64}"
    img = upstream_anon.images["oci"]
    manifest = f"{server.url}/v2/proxy/pool/anon/{img.repo}/manifests/{img.digest}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            # Slow readers, headers only; two customers (one license holds at most half the share).
            held = [await s.get(blob, headers={"Authorization": basic(lic)}) for lic in (LICENSE, OTHER_LICENSE)]
            assert [r.status for r in held] == [200, 200]
            auth = {"Authorization": basic(THIRD_LICENSE)}
            started = time.monotonic()
            async with s.get(blob, headers=auth) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
                error = (await r.json())["errors"][0]
            assert error["code"] == "UPSTREAM_UNAVAILABLE" and "'slow'" in error["message"]
            assert time.monotonic() - started < 5, "a bounded wait, not a hang"
            assert await _metric(server, "pullgate_upstream_pool_refused_total", "slow") == 1
            assert await _metric(server, "pullgate_upstream_pool_in_use", "slow") == 2
            # Another registry still gets one of the pool's connections, at once.
            started = time.monotonic()
            async with s.get(manifest, headers={**auth, "Accept": img.media_type}) as r:
                assert r.status == 200
                await r.read()
            assert time.monotonic() - started < 3
            for r in held:
                r.close()

            async def slow_registry_serves_again() -> bool:
                async with s.get(blob, headers=auth) as r:
                    return r.status == 200

            # The slow readers went away: their slots come back.
            deadline = time.monotonic() + 10
            while not await slow_registry_serves_again():
                assert time.monotonic() < deadline, "the slots of the clients that left never came back"
                await asyncio.sleep(0.2)
    finally:
        server.stop()
        slow.stop()


async def test_one_license_cannot_take_its_registrys_whole_share(tmp_path: Path):
    """Hole 4 within one vendor: by default a license may open 64 streams, more than a registry's
    50 upstream connections, so one customer reading slowly stalled every other customer of that
    registry. A license holds at most half of a registry's share; the rest stays for the others."""
    slow = TricklingRegistry()
    server = Pullgate(
        tmp_path,
        _teams([_registry("slow", slow.url)]),
        env=ENV,
        settings={"upstream": {"pool_per_registry": 4, "connect_timeout": 1}, "limits": {"streams_per_license": 10}},
    ).start()
    blob = f"{server.url}/v2/proxy/pool/slow/vendor/app/blobs/sha256:{'b' * 64}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            held = [await s.get(blob, headers={"Authorization": basic(LICENSE)}) for _ in range(2)]
            assert [r.status for r in held] == [200, 200]
            async with s.get(blob, headers={"Authorization": basic(LICENSE)}) as r:
                assert r.status == 429 and r.headers["Retry-After"]
                assert (await r.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
            other = [await s.get(blob, headers={"Authorization": basic(OTHER_LICENSE)}) for _ in range(2)]
            assert [r.status for r in other] == [200, 200], "the other customer was starved"
            for r in (*held, *other):
                r.close()
    finally:
        server.stop()
        slow.stop()
