"""Hole 7 and `limits.min_stream_rate`: a client that hangs up is not a server error
(499, as nginx logs it, never 500, never an error line), and a client that reads
too slowly is dropped while the others are served."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.hostile import OCI_MANIFEST, Body, HostileRegistry, image, repeated, repeated_digest
from tests.support.pullgate import Pullgate

LICENSE = "lic-gone-test-0123456789abcdef"
AUTH = {"Authorization": basic(LICENSE)}
MIN_RATE = 256 * 1024  # bytes/s
WINDOW = 1.0  # seconds
BIG = 64 * 1024 * 1024
BLOCK = os.urandom(1024 * 1024)
BIG_DIGEST = repeated_digest(BLOCK, BIG)
TRICKLE = 96 * 1024
TRICKLE_BLOCK = os.urandom(8 * 1024)
TRICKLE_DIGEST = repeated_digest(TRICKLE_BLOCK, TRICKLE)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    reg = HostileRegistry()
    img = image("vendor/app", "v1", "gone")
    reg.serve_image(img)
    # Slow to answer: clients hang up while the proxy waits for the upstream.
    reg.serve("/v2/vendor/app/manifests/slow", Body(img.manifest, {"Content-Type": OCI_MANIFEST}, delay=0.3))
    reg.serve(f"/v2/vendor/app/blobs/{BIG_DIGEST}", Body(stream=repeated(BLOCK, BIG), length=BIG))
    # An upstream slower than the minimum rate: its slowness is not the client's.
    reg.serve(
        f"/v2/vendor/app/blobs/{TRICKLE_DIGEST}",
        Body(stream=repeated(TRICKLE_BLOCK, TRICKLE, pause=0.25), length=TRICKLE),
    )
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hostile: HostileRegistry) -> Iterator[Pullgate]:
    teams = [
        {
            "name": "gone",
            "apps": [{"slug": "gone"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.test", "url": hostile.url, "insecure": True},
            ],
            "customers": [{"name": "C", "app": "gone", "license_id_env": "GONE_LICENSE"}],
        }
    ]
    settings = {"limits": {"min_stream_rate": MIN_RATE, "min_stream_window": WINDOW}}
    srv = Pullgate(tmp_path_factory.mktemp("gone"), teams, env={"GONE_LICENSE": LICENSE}, settings=settings).start()
    yield srv
    srv.stop()


def _path(kind: str, ref: str) -> str:
    return f"/v2/proxy/gone/up/vendor/app/{kind}/{ref}"


def _log(server: Pullgate) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines() if line.strip()]


def _requests_metric(server: Pullgate) -> dict[tuple[str, str], float]:
    import urllib.request

    with urllib.request.urlopen(server.admin_url + "/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("pullgate_requests_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            key = (labels["route"].strip('"'), labels["status"].strip('"'))
            out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("pullgate_streams_aborted_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[("aborted", reason)] = float(line.rsplit(" ", 1)[1])
    return out


async def _hang_up(server: Pullgate, path: str, after_bytes: int, wait: float) -> None:
    """Send a GET, read up to `after_bytes` of the answer (or wait `wait`), then reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Accept: {OCI_MANIFEST}\r\n\r\n".encode()
        )
        await writer.drain()
        if after_bytes:
            got = 0
            async with asyncio.timeout(5):
                while got < after_bytes:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    got += len(chunk)
        else:
            await asyncio.sleep(wait)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.transport.abort()


async def test_clients_hanging_up_are_499_never_500(server: Pullgate):
    """100 clients for 3 s, each hanging up mid-request: manifests while the proxy waits for
    the upstream, blobs mid-body. Before: 'internal error ClientConnectionResetError', 500."""
    lines_before = len(_log(server))
    before = _requests_metric(server)
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    stop = loop.time() + 3
    done = 0

    async def client() -> None:
        nonlocal done
        while loop.time() < stop:
            kind = rng.choice(("slow", "tag", "blob"))
            if kind == "blob":
                await _hang_up(server, _path("blobs", BIG_DIGEST), rng.randint(1, 4 << 20), 0)
            else:
                ref = "slow" if kind == "slow" else "v1"
                await _hang_up(server, _path("manifests", ref), 0, rng.uniform(0, 0.35))
            done += 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(client() for _ in range(100)))
    assert done >= 100
    # The proxy serves afterwards, and has logged every one of those requests.
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + _path("manifests", "v1"), headers={**AUTH, "Accept": OCI_MANIFEST}) as r:
            assert r.status == 200
    rid = r.headers["X-Request-Id"]
    assert server.wait_until(lambda: rid in server.log_text(), timeout=10)
    after = _requests_metric(server)
    lines = _log(server)[lines_before:]
    access = [e for e in lines if e["msg"] == "access"]
    assert [e for e in access if e["status"] >= 500] == []
    assert [e for e in lines if e["level"] in ("error", "critical")] == []
    assert any(e["status"] == 499 and e["route"] == "manifests" for e in access)
    assert any(e["status"] == 499 and e["route"] == "blobs" and e.get("aborted") == "client" for e in access)
    grew = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert grew.get(("manifests", "499"), 0) > 0 and grew.get(("blobs", "499"), 0) > 0
    assert not any(status.startswith("5") for (_, status) in grew), grew
    # The pull log says so too.
    with sqlite3.connect(server.db_path, timeout=10) as db:
        statuses = {row[0] for row in db.execute("SELECT DISTINCT status FROM pull_logs")}
    assert 499 in statuses and not any(s >= 500 for s in statuses), statuses


def _slow_reader(server: Pullgate, path: str, rate: int) -> tuple[float, int]:
    """Read `path` at about `rate` bytes/s with a tiny receive buffer; (seconds until cut, bytes read)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: {AUTH['Authorization']}\r\n\r\n".encode()
    )
    start = time.monotonic()
    got = 0
    step = 2048
    try:
        while time.monotonic() - start < 20:
            chunk = sock.recv(step)
            if not chunk:
                break
            got += len(chunk)
            time.sleep(step / rate)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        sock.close()
    return time.monotonic() - start, got


async def _whole(server: Pullgate, path: str) -> tuple[int, int]:
    import hashlib

    h = hashlib.sha256()
    size = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + path, headers=AUTH) as r:
            async for chunk in r.content.iter_chunked(1 << 20):
                h.update(chunk)
                size += len(chunk)
            return r.status, size if "sha256:" + h.hexdigest() in path else -1


async def test_a_slow_reader_is_dropped_and_a_normal_one_is_not(server: Pullgate):
    before = _requests_metric(server)
    slow = asyncio.create_task(asyncio.to_thread(_slow_reader, server, _path("blobs", BIG_DIGEST), 16 * 1024))
    # Meanwhile a normal client gets the same blob, whole.
    assert await _whole(server, _path("blobs", BIG_DIGEST)) == (200, BIG)
    seconds, got = await slow
    # Dropped within a few windows (the kernel's buffers flatter the first one), far from the end.
    assert seconds < 8 * WINDOW and got < BIG // 4, (seconds, got)
    assert server.wait_until(
        lambda: _requests_metric(server).get(("aborted", "slow"), 0) > before.get(("aborted", "slow"), 0)
    )
    assert server.wait_until(
        lambda: any(e["msg"] == "access" and e.get("aborted") == "slow" and e["status"] == 499 for e in _log(server))
    )
    assert "read slower than limits.min_stream_rate" in server.log_text()


async def test_a_slow_upstream_is_not_blamed_on_the_client(server: Pullgate):
    # 96 KiB at 32 KiB/s: three windows below the minimum rate, the client reading as fast as it can.
    assert await _whole(server, _path("blobs", TRICKLE_DIGEST)) == (200, TRICKLE)
