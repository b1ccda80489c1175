"""`pullgate serve --workers N`: several server processes on one port, one supervisor.

Every request here opens a fresh connection, so the kernel's SO_REUSEPORT hash spreads
them over the workers (40 connections all landing on one of two workers: 2^-39)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.poll import apoll, poll
from tests.support.procs import ManagedProcess
from tests.support.pullgate import REPO_ROOT, Pullgate
from tests.support.registry import Registry

LICENSE = "lic-workers-0123456789abcdef0123"
API_TOKEN = "workers-api-token-0123456789abcdef"
WINDOW = 2.0  # auth.license_cache_seconds here: the revocation window
OCI = "application/vnd.oci.image.manifest.v1+json"
FRESH = 40


def _teams(upstream: Registry) -> list[dict]:
    return [
        {
            "name": "workers",
            "api_tokens": [{"token_env": "WORKERS_API_TOKEN"}],
            "apps": [{"slug": "wapp"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.test", "url": upstream.url, "insecure": True}
            ],
            "customers": [{"name": "C", "app": "wapp", "license_id_env": "WORKERS_LICENSE"}],
        }
    ]


def _server(workdir: Path, upstream: Registry, workers: int = 2) -> Pullgate:
    return Pullgate(
        workdir,
        _teams(upstream),
        env={"WORKERS_LICENSE": LICENSE, "WORKERS_API_TOKEN": API_TOKEN},
        settings={
            # Refusals after the revocation must stay 401s, not the failed-auth throttle's 429.
            "auth": {"license_cache_seconds": WINDOW, "failed_per_minute": 10_000, "failed_burst": 10_000},
            "proxy": {"shutdown_grace_seconds": 5},
        },
        args=["--workers", str(workers)],
    )


@pytest.fixture
def server(workdir: Path, upstream_anon: Registry) -> Iterator[Pullgate]:
    s = _server(workdir, upstream_anon).start()
    try:
        poll(lambda: len(workers_of(s)) == 2 and s.log_text().count("listening: proxy") == 2, 30, "two workers up")
        yield s
    finally:
        s.stop()


def workers_of(server: Pullgate) -> list[int]:
    path = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def _manifest_url(server: Pullgate, upstream: Registry) -> str:
    img = upstream.images["oci"]
    return f"{server.url}/v2/proxy/wapp/up/{img.repo}/manifests/v1"


async def _statuses(url: str, n: int = FRESH) -> list[int]:
    """`n` manifest GETs, each on a connection of its own, 8 at a time (a license's
    concurrent streams are limited)."""
    headers = {"Authorization": basic(LICENSE), "Accept": OCI}
    connector = aiohttp.TCPConnector(force_close=True)
    gate = asyncio.Semaphore(8)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one() -> int:
            async with gate, s.get(url, headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def _metrics(server: Pullgate) -> str:
    async with aiohttp.ClientSession() as s, s.get(server.admin_url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


async def _counted(server: Pullgate, want: int) -> None:
    """Until the manifest 200s counted reach `want`: the access log counts a request once its
    answer is out, so the client can read the last answer a moment before it is counted."""

    async def manifests() -> float:
        return _sample(await _metrics(server), "pullgate_requests_total", route="manifests", status="200")

    await apoll(lambda: _at(manifests(), want), 10, f"{want} manifest 200s counted")


async def _at(value: Awaitable[float], want: int) -> bool:
    got = await value
    assert got <= want, f"{got} counted for {want} requests"
    return got == want


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include these."""
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def test_both_workers_serve_one_port_and_metrics_are_totals(server: Pullgate, upstream_anon: Registry):
    pids = workers_of(server)
    assert len(pids) == 2 and server.pid not in pids
    url = _manifest_url(server, upstream_anon)
    assert await _statuses(url) == [200] * FRESH
    text = await _metrics(server)
    per_worker = [_sample(text, "pullgate_worker_requests_total", worker=str(i)) for i in range(2)]
    assert all(n > 0 for n in per_worker), per_worker  # both took requests
    assert sum(per_worker) == FRESH
    # The request counter is the sum over both workers, whichever one answered the scrape.
    await _counted(server, FRESH)
    # Every scrape, answered by either worker, shows the same totals.
    for _ in range(6):
        again = await _metrics(server)
        assert _sample(again, "pullgate_requests_total", route="manifests", status="200") == FRESH
    # A live gauge: nothing streams now, across the workers.
    assert _sample(text, "pullgate_streams_in_flight") == 0
    # The start-up jobs ran once, in the supervisor: one bootstrap, not one per worker.
    log = server.log_text()
    assert "supervising 2 workers" in log
    assert log.count("created a new master keyring") == 1


async def test_revocation_through_one_worker_bites_on_every_worker(server: Pullgate, upstream_anon: Registry):
    url = _manifest_url(server, upstream_anon)
    assert await _statuses(url) == [200] * FRESH  # both workers now cache the license as active
    auth = {"Authorization": API_TOKEN}
    async with aiohttp.ClientSession() as s:
        async with s.get(server.admin_url + "/vendor/v3/customers", headers=auth) as r:
            assert r.status == 200
            (customer,) = (await r.json())["customers"]
        revoked_at = time.monotonic()
        async with s.post(f"{server.admin_url}/vendor/v3/customer/{customer['id']}/revoke", headers=auth) as r:
            assert r.status == 200

    async def all_refused() -> bool:
        return set(await _statuses(url)) == {401}

    # Within the revocation window (the read cache's TTL), with a margin for a busy machine.
    await apoll(all_refused, WINDOW + 4, "every worker refusing the revoked license", interval=0.2)
    assert time.monotonic() - revoked_at < WINDOW + 4
    text = await _metrics(server)
    per_worker = [_sample(text, "pullgate_worker_requests_total", worker=str(i)) for i in range(2)]
    assert all(n > 0 for n in per_worker), (per_worker, [x for x in text.splitlines() if "worker" in x])


async def test_a_registry_added_through_one_worker_serves_on_every_worker(server: Pullgate, upstream_anon: Registry):
    img = upstream_anon.images["oci"]
    url = f"{server.url}/v2/proxy/wapp/added/{img.repo}/manifests/v1"
    assert set(await _statuses(url)) == {404}  # every worker has now read (and cached) the app's registries
    body = {
        "provider": "other",
        "endpoint": "added.test",
        "slug": "added",
        "url": upstream_anon.url,
        "insecure": True,
        "appIds": ["wapp"],
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(
            server.admin_url + "/vendor/v3/external_registry", json=body, headers={"Authorization": API_TOKEN}
        ) as r:
            assert r.status == 201, await r.text()
    added_at = time.monotonic()

    async def all_served() -> bool:
        return set(await _statuses(url)) == {200}

    await apoll(all_served, WINDOW + 4, "every worker serving the new registry", interval=0.2)
    assert time.monotonic() - added_at < WINDOW + 4


async def test_a_killed_worker_is_restarted(server: Pullgate, upstream_anon: Registry):
    url = _manifest_url(server, upstream_anon)
    assert await _statuses(url) == [200] * FRESH
    # Counted before the kill: a request is counted just after its answer is out, and a
    # SIGKILL in between would take that count with it (no process can keep it).
    await _counted(server, FRESH)
    before = workers_of(server)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    await apoll(
        lambda: len(workers_of(server)) == 2 and victim not in workers_of(server), 30, "a new worker in its place"
    )
    assert before[1] in workers_of(server)  # the other one was left alone
    await apoll(lambda: "listening: proxy" in server.log_text().split(f"(pid {victim})")[-1], 30, "the new one up")
    assert await _statuses(url) == [200] * FRESH
    assert "restarting in" in server.log_text()
    # The killed worker's counts stay in the totals: they never go back.
    await _counted(server, 2 * FRESH)


async def test_sigterm_stops_every_worker_cleanly(server: Pullgate, upstream_anon: Registry):
    assert await _statuses(_manifest_url(server, upstream_anon)) == [200] * FRESH
    pids = workers_of(server)
    server.terminate()
    assert server.wait(30) == 0
    for pid in pids:
        poll(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, f"worker {pid} gone")
    log = server.log_text()
    assert log.count('"stopped"') == 2, log[-3000:]  # each worker drained and closed its store
    assert "stopped all workers" in log
    # Every access line queued before the stop was written: none lost at shutdown.
    assert log.count('"route": "manifests", "status": 200') == FRESH


async def test_sqlite_writers_take_turns(server: Pullgate, upstream_anon: Registry):
    """Both workers write pull-log batches while `keys rotate` reseals every secret in the
    same SQLite file, twice: every row is written, nothing is dropped or refused as locked."""
    url = _manifest_url(server, upstream_anon)
    rotate = [sys.executable, "-m", "proxy", "keys", "rotate", "--config", str(server.config_path)]

    async def rotations() -> list[int]:
        codes = []
        for _ in range(2):
            p = await asyncio.create_subprocess_exec(*rotate, cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL)
            codes.append(await p.wait())
        return codes

    # 3 rounds of 8 at a time: 24 bodies at once stay under the license's share of the registry's
    # pool (upstream.pool_per_registry // 2 = 25) even if every one lands on the same worker.
    rounds = 3
    pulls, codes = await asyncio.gather(asyncio.gather(*(_statuses(url) for _ in range(rounds))), rotations())
    assert codes == [0, 0]
    assert all(s == [200] * FRESH for s in pulls)

    def logged() -> int:
        with sqlite3.connect(server.db_path, timeout=10) as db:
            return int(db.execute("SELECT COUNT(*) FROM pull_logs WHERE action = 'manifest'").fetchone()[0])

    poll(lambda: logged() == rounds * FRESH, 20, "every pull in the pull log")
    text = await _metrics(server)
    assert _sample(text, "pullgate_pull_log_dropped_total") == 0
    assert _sample(text, "pullgate_pull_log_written_total") >= rounds * FRESH
    assert "locked" not in server.log_text()
    # The rotated keyring reached both workers: pulls still open the (resealed) registry secrets.
    assert await _statuses(url) == [200] * FRESH


def test_workers_that_keep_dying_stop_the_supervisor(workdir: Path, upstream_anon: Registry):
    """Workers that cannot bind (the port is someone else's, without SO_REUSEPORT) keep
    exiting: the supervisor gives up and exits non-zero, leaving nothing running."""
    server = _server(workdir, upstream_anon)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", server.port))
    squatter.listen()
    try:
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(server.config_path), *server.args]
        proc = ManagedProcess(argv, workdir, "supervisor", env=server.env, cwd=REPO_ROOT)
        try:
            code = proc.proc.wait(90)
        finally:
            proc.stop()
        assert code == 1, proc.log_text()[-3000:]
        assert "giving up" in proc.log_text()
        assert "cannot listen" in proc.log_text()
    finally:
        squatter.close()
