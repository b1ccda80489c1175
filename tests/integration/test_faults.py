"""Faults, with real processes on loopback: each ends with every client seeing either a
full, correct body or a clear failure (an error status, or a connection that breaks),
never a short 200; and the proxy serving afterwards with its file descriptors and
asyncio tasks back where they were.

Resources are compared as: open fds of the proxy process, not counting pooled keep-alive
sockets to the upstreams (those close after their keep-alive, by design), and the
`pullgate_asyncio_tasks` gauge of the admin /metrics. Every test is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.images import MiB, PushedImage, Pusher, oci_image
from tests.support.poll import apoll
from tests.support.postgres import PostgresCluster
from tests.support.pullgate import REPO_ROOT, Pullgate
from tests.support.registry import Registry
from tests.support.slow_servers import ChallengingRegistry, HangingServer, TrickleRegistry
from tests.support.token_server import TokenServer

LAYER_MIB = 24
LICENSE = f"lic-faults-{secrets.token_hex(12)}"


# --- shared pieces ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin() -> Iterator[Registry]:
    """A registry without auth holding one image with a large layer."""
    reg = Registry("none", name="faults-origin")
    try:
        reg.images["big"] = oci_image(
            Pusher.for_registry(reg), "vendor/big", "v1", [(4096, "s"), (LAYER_MIB * MiB, "f")]
        )
        yield reg
    finally:
        reg.stop()


def _registry(slug: str, url: str) -> dict[str, object]:
    return {"slug": slug, "provider": "other", "endpoint": f"{slug}.faults.test", "url": url, "insecure": True}


def _proxy(workdir: Path, registries: list[dict[str, object]], **settings: object) -> Pullgate:
    teams = [
        {
            "name": "acme",
            "apps": [{"slug": "acme"}],
            "registries": registries,
            "customers": [{"name": "C", "app": "acme", "license_id_env": "PGT_FAULTS_LICENSE"}],
        }
    ]
    extra = {k: v for k, v in settings.items() if k != "env"}
    env = {"PGT_FAULTS_LICENSE": LICENSE, **settings.get("env", {})}  # type: ignore[dict-item]
    return Pullgate(workdir, teams, env=env, settings=extra).start()


AUTH = {"Authorization": basic(LICENSE)}


@dataclass
class Outcome:
    kind: str  # ok | failed | short-200
    detail: str = ""


async def pull_blob(
    session: aiohttp.ClientSession,
    url: str,
    digest: str,
    size: int,
    pace: float = 0.0,
    started: asyncio.Event | None = None,
) -> Outcome:
    """GET a blob and judge it: full and correct, a clear failure, or a short 200."""
    h = hashlib.sha256()
    got = 0
    try:
        async with session.get(url, headers=AUTH) as r:
            if started is not None:
                started.set()
            if r.status != 200:
                await r.read()
                return Outcome("failed", f"status {r.status}")
            async for chunk in r.content.iter_chunked(256 * 1024):
                h.update(chunk)
                got += len(chunk)
                if pace:
                    await asyncio.sleep(pace)
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        return Outcome("failed", type(exc).__name__)
    if got == size and "sha256:" + h.hexdigest() == digest:
        return Outcome("ok")
    return Outcome("short-200", f"{got} of {size} bytes")


def _metric(server: Pullgate, name: str) -> float:
    with urllib.request.urlopen(server.admin_url + "/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def resources(server: Pullgate, upstream_ports: set[int]) -> tuple[int, int]:
    """(fds without pooled upstream sockets, asyncio tasks)."""
    pooled = sum(1 for _, port in server.tcp_peers() if port in upstream_ports)
    return server.open_fds() - pooled, int(_metric(server, "pullgate_asyncio_tasks"))


def assert_back(server: Pullgate, before: tuple[int, int], upstream_ports: set[int], timeout: float = 20) -> None:
    """fds and tasks return to their level before the fault (a little slack for timers)."""
    now = before
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = resources(server, upstream_ports)
        if now[0] <= before[0] + 1 and now[1] <= before[1] + 2:
            return
        time.sleep(0.25)
    raise AssertionError(f"resources not back: before (fds, tasks) {before}, now {now}\n{server.log_text()[-3000:]}")


async def serves(server: Pullgate, url: str, digest: str, size: int) -> None:
    async with aiohttp.ClientSession() as s:
        outcome = await pull_blob(s, url, digest, size)
        assert outcome.kind == "ok", outcome


def _blob_url(server: Pullgate, slug: str, img: PushedImage) -> tuple[str, str, int]:
    digest, size = img.blobs[-1]
    return f"{server.url}/v2/proxy/acme/{slug}/{img.repo}/blobs/{digest}", digest, size


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# --- the faults -------------------------------------------------------------------------


async def test_upstream_killed_mid_blob(origin: Registry, workdir: Path):
    # A second registry process over the same storage: the one killed with -9.
    victim = Registry("none", name="faults-victim", workdir=origin.dir)
    server = _proxy(workdir, [_registry("victim", victim.url), _registry("origin", origin.url)])
    try:
        img = origin.images["big"]
        url, digest, size = _blob_url(server, "victim", img)
        ports = {victim.port, origin.port}
        await serves(server, *_blob_url(server, "origin", img))
        before = resources(server, ports)
        async with aiohttp.ClientSession() as s:
            started = [asyncio.Event() for _ in range(5)]
            pulls = [asyncio.create_task(pull_blob(s, url, digest, size, pace=0.05, started=e)) for e in started]
            async with asyncio.timeout(20):
                await asyncio.gather(*(e.wait() for e in started))
            await asyncio.sleep(0.3)
            assert victim.proc is not None
            victim.proc.proc.kill()  # SIGKILL, mid-transfer
            async with asyncio.timeout(60):
                outcomes = await asyncio.gather(*pulls)
        kinds = Counter(o.kind for o in outcomes)
        assert kinds["short-200"] == 0, outcomes
        assert kinds["failed"] >= 1, outcomes
        # The dead upstream is a clear 5xx now; the other one still serves.
        async with aiohttp.ClientSession() as s, s.get(url, headers=AUTH) as r:
            assert r.status in (502, 503, 504)
            assert (await r.json())["errors"][0]["code"].startswith("UPSTREAM")
        await serves(server, *_blob_url(server, "origin", img))
        assert_back(server, before, ports)
    finally:
        server.stop()
        victim.stop()


async def test_upstream_trickling_one_byte_a_second(origin: Registry, workdir: Path):
    trickle = TrickleRegistry(max_seconds=40)
    # idle 4 s against a byte every second: margin for a loaded machine's scheduling.
    upstream = {"connect_timeout": 2, "first_byte_timeout": 3, "idle_timeout": 4, "retries": 0}
    server = _proxy(workdir, [_registry("trickle", trickle.url), _registry("origin", origin.url)], upstream=upstream)
    try:
        ports = {trickle.port, origin.port}
        await serves(server, *_blob_url(server, "origin", origin.images["big"]))
        before = resources(server, ports)
        body, digest = TrickleRegistry.BODY, TrickleRegistry.DIGEST
        base = f"{server.url}/v2/proxy/acme/trickle"
        started = time.monotonic()
        async with aiohttp.ClientSession() as s:
            async with asyncio.timeout(30):
                whole, stalled, headers = await asyncio.gather(
                    # One byte a second, never idle for 4 s: slow, but whole and correct.
                    pull_blob(s, f"{base}/slow/x/blobs/{digest}", digest, len(body)),
                    # Three bytes, then silence: cut after the idle timeout, never a clean end.
                    pull_blob(s, f"{base}/stall/x/blobs/{digest}", digest, len(body)),
                    # A status line that never ends: 504 after the first-byte timeout.
                    pull_blob(s, f"{base}/headers/x/blobs/{digest}", digest, len(body)),
                )
        assert whole.kind == "ok", whole
        assert stalled.kind == "failed", stalled
        assert headers == Outcome("failed", "status 504"), headers
        assert time.monotonic() - started < 20
        assert_back(server, before, ports)
        await serves(server, *_blob_url(server, "origin", origin.images["big"]))
    finally:
        server.stop()
        trickle.stop()


async def test_token_server_that_hangs(origin: Registry, workdir: Path):
    realm = HangingServer()
    registry = ChallengingRegistry(realm.url + "/token")
    upstream = {"connect_timeout": 2, "first_byte_timeout": 3, "idle_timeout": 3, "retries": 0}
    server = _proxy(workdir, [_registry("hung", registry.url), _registry("origin", origin.url)], upstream=upstream)
    try:
        ports = {realm.port, registry.port, origin.port}
        await serves(server, *_blob_url(server, "origin", origin.images["big"]))
        before = resources(server, ports)
        url = f"{server.url}/v2/proxy/acme/hung/vendor/x/manifests/v1"
        started = time.monotonic()
        async with aiohttp.ClientSession() as s:

            async def one() -> tuple[int, str]:
                async with s.get(url, headers=AUTH) as r:
                    return r.status, (await r.json())["errors"][0]["code"]

            async with asyncio.timeout(20):
                answers = await asyncio.gather(*(one() for _ in range(10)))
        assert set(answers) <= {(504, "UPSTREAM_TIMEOUT"), (502, "UPSTREAM_ERROR")}, answers
        assert time.monotonic() - started < 10  # the configured 3 s, not a hang
        assert realm.accepted >= 1
        realm.stop()  # the proxy's half-open sockets to it must go too
        assert_back(server, before, ports - {realm.port})
        await serves(server, *_blob_url(server, "origin", origin.images["big"]))
    finally:
        server.stop()
        registry.stop()
        realm.stop()


def _restart(cluster: PostgresCluster) -> None:
    """Stop (fast: clients are disconnected) and start again on the same port, a second later.

    Not `pg_ctl restart`: without `-l` the new server would keep our captured pipes open."""
    pg_ctl = str(cluster.bindir / "pg_ctl")
    cluster._run(pg_ctl, "-D", str(cluster.data), "-m", "fast", "-w", "stop")
    time.sleep(1)
    opts = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {cluster.root} -c fsync=off -c max_connections=200"
    cluster._run(
        pg_ctl, "-D", str(cluster.data), "-l", str(cluster.root / "log"), "-o", opts, "-w", "-t", "30", "start"
    )


async def test_postgres_restarted_during_pulls(origin: Registry, cluster: PostgresCluster, workdir: Path):
    server = _proxy(workdir, [_registry("origin", origin.url)], store=cluster.dsn(), auth={"license_cache_seconds": 0})
    try:
        img = origin.images["big"]
        url, digest, size = _blob_url(server, "origin", img)
        await serves(server, url, digest, size)
        before = resources(server, {origin.port})
        async with aiohttp.ClientSession() as s:
            started = [asyncio.Event() for _ in range(8)]
            in_flight = [asyncio.create_task(pull_blob(s, url, digest, size, pace=0.05, started=e)) for e in started]
            async with asyncio.timeout(20):
                await asyncio.gather(*(e.wait() for e in started))
            restart = asyncio.create_task(asyncio.to_thread(_restart, cluster))
            # Pulls that start while the database is down or coming back: success or a clear failure.
            during = []
            while not restart.done():
                during.append(await pull_blob(s, url, digest, size))
                await asyncio.sleep(0.05)
            await restart
            async with asyncio.timeout(90):
                outcomes = await asyncio.gather(*in_flight)
        assert all(o.kind == "ok" for o in outcomes), outcomes  # streams do not need the database
        # A database that is down is a 503 with Retry-After, not a 500 "internal error".
        assert all(o.kind == "ok" or o.detail == "status 503" for o in during), during
        assert "internal error" not in server.log_text(), server.log_text()[-3000:]
        # Back: new pulls succeed (the pool reconnects), within seconds.
        deadline = time.monotonic() + 30
        while True:
            async with aiohttp.ClientSession() as s:
                if (await pull_blob(s, url, digest, size)).kind == "ok":
                    break
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            await asyncio.sleep(0.5)
        assert_back(server, before, {origin.port}, timeout=30)
    finally:
        server.stop()


async def test_keyring_rotated_during_pulls(workdir: Path):
    # Tokens that live 2 s: the proxy opens the sealed registry password again and again.
    ts = TokenServer({"vendor": "rotate-pw-" + secrets.token_hex(6)}, expires_in=2, cert_path=workdir / "ts.pem")
    reg = Registry("token", password=ts.users["vendor"], token_server=ts, name="faults-rotate")
    try:
        p = Pusher.for_registry(reg)
        images = [oci_image(p, f"vendor/r{i}", "v1", [(64 * 1024, f"r{i}")]) for i in range(6)]
        registry = _registry("rot", reg.url) | {"username": "vendor", "password_env": "PGT_ROT_PW"}
        server = _proxy(
            workdir / "proxy", [registry], env={"PGT_ROT_PW": ts.users["vendor"]}, auth={"license_cache_seconds": 0}
        )
        try:
            before = resources(server, {reg.port, ts.port})
            stop = asyncio.Event()
            outcomes: list[Outcome] = []

            async def puller(img: PushedImage) -> None:
                async with aiohttp.ClientSession() as s:
                    while not stop.is_set():
                        outcomes.append(await pull_blob(s, *_blob_url(server, "rot", img)[0:3]))

            tasks = [asyncio.create_task(puller(img)) for img in images]
            await apoll(lambda: len(outcomes) >= len(images), 20, "the pullers running")
            for _ in range(3):
                reloads, pulled = server.log_text().count("master keyring reloaded"), len(outcomes)
                res = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "proxy", "keys", "rotate", "--config", str(server.config_path)],
                    cwd=REPO_ROOT,
                    env=server.env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert res.returncode == 0, res.stderr
                # The running proxy takes the new keyring in, and pulls go on under it.
                await apoll(lambda n=reloads: server.log_text().count("master keyring reloaded") > n, 10, "reloaded")
                await apoll(lambda n=pulled: len(outcomes) >= n + 2 * len(images), 20, "pulls after it")
            stop.set()
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)
            kinds = Counter(o.kind for o in outcomes)
            assert kinds["ok"] >= 30 and kinds["ok"] == len(outcomes), (kinds, [o for o in outcomes if o.kind != "ok"])
            assert '"level": "error"' not in server.log_text(), server.log_text()[-3000:]
            assert_back(server, before, {reg.port, ts.port})
        finally:
            server.stop()
    finally:
        reg.stop()
        ts.stop()


async def test_sigterm_during_50_streams(origin: Registry, workdir: Path):
    # One license pulls all 50: it may hold at most half a registry's share of the pool.
    server = _proxy(
        workdir,
        [_registry("origin", origin.url)],
        proxy={"shutdown_grace_seconds": 20},
        upstream={"pool_per_registry": 100},
    )
    img = origin.images["big"]
    url, digest, size = _blob_url(server, "origin", img)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:
            started = [asyncio.Event() for _ in range(50)]
            pulls = [asyncio.create_task(pull_blob(s, url, digest, size, pace=0.01, started=e)) for e in started]
            async with asyncio.timeout(60):
                await asyncio.gather(*(e.wait() for e in started))
            server.terminate()
            async with asyncio.timeout(60):
                outcomes = await asyncio.gather(*pulls)
        code = await asyncio.to_thread(server.wait, 30)
        kinds = Counter(o.kind for o in outcomes)
        assert kinds["short-200"] == 0, outcomes
        assert kinds["ok"] == 50, outcomes  # the grace is long enough for every stream to finish
        assert code == 0, server.log_text()[-3000:]
        # Nothing new was accepted after the signal.
        with pytest.raises(OSError):
            urllib.request.urlopen(server.url + "/v2/", timeout=2)  # noqa: S310 - loopback
    finally:
        server.stop()
