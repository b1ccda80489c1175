"""Limits on the proxy listener, with real sockets (DESIGN "Limits"): request
headers must arrive within `limits.header_timeout` (slowloris), open
connections are capped by `limits.max_connections`, and concurrent manifest and
blob bodies per license and per address by `limits.streams_per_*`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.pullgate import Pullgate
from tests.support.trickle import FAST_DIGEST, SLOW_BLOB, SLOW_DIGEST, TrickleRegistry

LICENSES = {
    "A": "lic-limits-a-0123456789abcdef",
    "B": "lic-limits-b-0123456789abcdef",
    "C": "lic-limits-c-0123456789abc",
}
HEADER_TIMEOUT = 1.5
REPO = "/v2/proxy/lim/slow/vendor/app"


def _teams(url: str) -> list[dict[str, object]]:
    registry = {"slug": "slow", "provider": "other", "endpoint": "slow.test", "url": url, "insecure": True}
    customers = [{"name": f"Customer {k}", "app": "lim", "license_id_env": f"LIMITS_LIC_{k}"} for k in LICENSES]
    return [{"name": "limits", "apps": [{"slug": "lim"}], "registries": [registry], "customers": customers}]


@pytest.fixture(scope="module")
def trickle() -> Iterator[TrickleRegistry]:
    reg = TrickleRegistry(interval=0.1, max_seconds=30)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trickle: TrickleRegistry) -> Iterator[Pullgate]:
    settings = {"limits": {"header_timeout": HEADER_TIMEOUT, "streams_per_license": 2, "streams_per_address": 3}}
    env = {f"LIMITS_LIC_{k}": v for k, v in LICENSES.items()}
    srv = Pullgate(tmp_path_factory.mktemp("limits"), _teams(trickle.url), env=env, settings=settings).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory, trickle: TrickleRegistry) -> Iterator[Pullgate]:
    env = {f"LIMITS_LIC_{k}": v for k, v in LICENSES.items()}
    settings = {"limits": {"max_connections": 4, "header_timeout": 20}}
    srv = Pullgate(tmp_path_factory.mktemp("limits-small"), _teams(trickle.url), env=env, settings=settings).start()
    yield srv
    srv.stop()


def _connect(server: Pullgate) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset); False while it is open."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _request(sock: socket.socket, path: str, license_id: str) -> bytes:
    host = f"127.0.0.1:{sock.getpeername()[1]}"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {basic(license_id)}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "closed before a response"
        head += chunk
    return head


async def _metrics(server: Pullgate) -> str:
    async with aiohttp.ClientSession() as s, s.get(server.admin_url + "/metrics") as r:
        return await r.text()


async def _status(server: Pullgate, path: str, license_id: str) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(server.url + path, headers={"Authorization": basic(license_id)}) as r,
    ):
        await r.read()
        return r.status


# --- header timeout (slowloris) ---------------------------------------------------------


def _trickle_until_closed(sock: socket.socket, limit: float) -> float:
    """Send a request line, then a header byte every 0.2 s; seconds until the server hung up."""
    start = time.monotonic()
    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    while time.monotonic() - start < limit:
        try:
            sock.sendall(b"X")
        except OSError:
            break
        if _closed_by_peer(sock):
            break
        time.sleep(0.2)
    return time.monotonic() - start


async def test_slowloris_connection_is_closed_within_the_header_timeout(server: Pullgate):
    sock = _connect(server)
    try:
        took = await asyncio.to_thread(_trickle_until_closed, sock, HEADER_TIMEOUT + 8)
    finally:
        sock.close()
    assert HEADER_TIMEOUT - 0.3 <= took <= HEADER_TIMEOUT + 3, took
    assert 'pullgate_connections_refused_total{reason="header_timeout"}' in await _metrics(server)


async def test_a_silent_connection_is_closed_too(server: Pullgate):
    sock = _connect(server)
    try:
        start = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT + 8)
        with contextlib.suppress(OSError):
            assert sock.recv(1024) == b""
        assert time.monotonic() - start <= HEADER_TIMEOUT + 3
    finally:
        sock.close()


async def test_keep_alive_connection_must_send_the_next_headers_in_time(server: Pullgate):
    sock = _connect(server)
    try:
        head = await asyncio.to_thread(_request, sock, "/v2/", LICENSES["A"])
        assert head.startswith(b"HTTP/1.1 200")
        # The next request begins and stalls: closed within the timeout of the response.
        took = await asyncio.to_thread(_trickle_until_closed, sock, HEADER_TIMEOUT + 8)
        assert took <= HEADER_TIMEOUT + 3, took
    finally:
        sock.close()


async def test_many_slowloris_connections_do_not_block_a_pull(server: Pullgate):
    socks = [_connect(server) for _ in range(60)]
    try:
        for s in socks:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert await _status(server, f"{REPO}/manifests/v1", LICENSES["A"]) == 200
        assert await _status(server, f"{REPO}/blobs/{FAST_DIGEST}", LICENSES["A"]) == 200
        # And every one of them is gone after the timeout.
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        while not all(_closed_by_peer(s) for s in socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert all(_closed_by_peer(s) for s in socks)
    finally:
        for s in socks:
            s.close()


async def test_a_long_stream_is_not_cut_by_the_header_timeout(server: Pullgate, trickle: TrickleRegistry):
    """The timeout is for headers only: a body that takes longer is fine."""
    trickle.hold()
    try:
        async with aiohttp.ClientSession() as s:
            url = f"{server.url}{REPO}/blobs/{SLOW_DIGEST}"
            async with s.get(url, headers={"Authorization": basic(LICENSES["C"])}) as r:
                assert r.status == 200
                await asyncio.sleep(HEADER_TIMEOUT + 0.5)
                trickle.release()
                assert await r.read() == SLOW_BLOB
    finally:
        trickle.release()


# --- concurrent streams per license and address -------------------------------------------


async def _open_slow(session: aiohttp.ClientSession, server: Pullgate, license_id: str) -> aiohttp.ClientResponse:
    r = await session.get(f"{server.url}{REPO}/blobs/{SLOW_DIGEST}", headers={"Authorization": basic(license_id)})
    assert r.status == 200
    return r


async def _wait_for(predicate, timeout: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_streams_per_license_and_address(server: Pullgate, trickle: TrickleRegistry):
    trickle.hold()
    base = trickle.streaming
    headers_a = {"Authorization": basic(LICENSES["A"])}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            open_a = [await _open_slow(s, server, LICENSES["A"]) for _ in range(2)]
            assert await _wait_for(lambda: trickle.streaming == base + 2)
            # A third body for license A: 429 with Retry-After, and no upstream request.
            gets = trickle.gets
            async with s.get(f"{server.url}{REPO}/blobs/{SLOW_DIGEST}", headers=headers_a) as r:
                assert r.status == 429
                assert int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
            async with s.get(f"{server.url}{REPO}/manifests/v1", headers=headers_a) as r:
                assert r.status == 429
            assert trickle.gets == gets
            # HEAD is not a body: still answered.
            async with s.head(f"{server.url}{REPO}/blobs/{SLOW_DIGEST}", headers=headers_a) as r:
                assert r.status == 200
            # Another license still pulls (the address has 3 slots)...
            open_b = await _open_slow(s, server, LICENSES["B"])
            # ... and now the address is full: license C, with no stream of its own, gets 429.
            async with s.get(
                f"{server.url}{REPO}/blobs/{FAST_DIGEST}", headers={"Authorization": basic(LICENSES["C"])}
            ) as r:
                assert r.status == 429
            # Streams end, one normally and one by the client leaving: their slots come back.
            trickle.release()
            assert await open_a[0].read() == SLOW_BLOB
            open_a[1].close()
            assert await open_b.read() == SLOW_BLOB
            assert await _wait_for(lambda: trickle.streaming == base)
        statuses = [await _status(server, f"{REPO}/blobs/{FAST_DIGEST}", LICENSES[k]) for k in "AAC"]
        assert statuses == [200, 200, 200]
        text = await _metrics(server)
        assert 'pullgate_streams_refused_total{reason="license"} 2.0' in text
        assert 'pullgate_streams_refused_total{reason="address"} 1.0' in text
    finally:
        trickle.release()


async def test_a_client_that_leaves_mid_stream_frees_its_slots(server: Pullgate, trickle: TrickleRegistry):
    trickle.hold()
    base = trickle.streaming
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for r in [await _open_slow(s, server, LICENSES["B"]) for _ in range(2)]:
                r.close()  # hang up mid-body
        # The proxy notices at its next write; then license B may open two streams again.
        assert await _wait_for(lambda: trickle.streaming == base)

        async def both_open() -> bool:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                url = f"{server.url}{REPO}/blobs/{SLOW_DIGEST}"
                hdrs = {"Authorization": basic(LICENSES["B"])}
                async with s.get(url, headers=hdrs) as r1, s.get(url, headers=hdrs) as r2:
                    return (r1.status, r2.status) == (200, 200)

        deadline = time.monotonic() + 10
        while not await both_open() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        trickle.release()
        # The two streams the loop left behind are freed when the proxy next writes to them: poll.
        deadline = time.monotonic() + 10
        while not await both_open():
            assert time.monotonic() < deadline, "slots never came back after the streams ended"
            await asyncio.sleep(0.1)
    finally:
        trickle.release()


# --- max_connections ---------------------------------------------------------------------


async def test_connections_beyond_max_are_closed_and_open_ones_keep_working(small_server: Pullgate):
    before = small_server.open_fds()
    held = [_connect(small_server) for _ in range(4)]
    try:
        deadline = time.monotonic() + 10  # until the proxy has accepted them all
        while "pullgate_connections_open 4.0" not in await _metrics(small_server) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        extra = _connect(small_server)
        extra.settimeout(5)
        try:
            answer = extra.recv(65536)
        except OSError:
            answer = b""
        finally:
            extra.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
        # The four open connections still work.
        for sock in held:
            head = await asyncio.to_thread(_request, sock, "/v2/", LICENSES["A"])
            assert head.startswith(b"HTTP/1.1 200")
        text = await _metrics(small_server)
        assert 'pullgate_connections_refused_total{reason="max_connections"} 1.0' in text
        assert "pullgate_connections_open 4.0" in text
    finally:
        for sock in held:
            sock.close()
    # Once they close, new connections are served again and the descriptors are back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if await _status(small_server, "/v2/", LICENSES["A"]) == 200:
                break
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    assert await _status(small_server, "/v2/", LICENSES["A"]) == 200
    assert small_server.wait_until(lambda: small_server.open_fds() <= before, timeout=10)


def _trickle_body_until_closed(sock: socket.socket, limit: float) -> float:
    """POST the token form with whole headers, then its body a byte every 0.2 s; seconds until hung up."""
    start = time.monotonic()
    host = f"127.0.0.1:{sock.getpeername()[1]}"
    sock.sendall(
        f"POST /v2/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 60000\r\n\r\ngrant_type=password".encode()
    )
    while time.monotonic() - start < limit:
        try:
            sock.sendall(b"x")
        except OSError:
            break
        if _closed_by_peer(sock):
            break
        time.sleep(0.2)
    return time.monotonic() - start


async def test_a_request_body_trickled_to_the_token_endpoint_is_cut_off_too(server: Pullgate):
    """Slowloris through the one body the proxy reads (containerd's OAuth2 form): bounded like headers."""
    socks = [_connect(server) for _ in range(3)]
    try:
        took = await asyncio.gather(
            *(asyncio.to_thread(_trickle_body_until_closed, s, HEADER_TIMEOUT + 8) for s in socks)
        )
    finally:
        for s in socks:
            s.close()
    assert max(took) <= HEADER_TIMEOUT + 3, took
    assert 'pullgate_connections_refused_total{reason="body_timeout"} 3.0' in await _metrics(server)
    assert await _status(server, "/v2/", LICENSES["A"]) == 200
    # A whole form sent at once is read as before (refused here: the license is wrong, an
    # OAuth2 invalid_grant).
    async with aiohttp.ClientSession() as s:
        form = {"grant_type": "password", "username": "x", "password": "not-a-license", "service": "x"}
        async with s.post(server.url + "/v2/token", data=form) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "invalid_grant"
