"""Cached bytes out to the client: a held object (a hit, `Range` included) or a file being
written by a fetch (a reader tailing it).

Two ways, chosen by `cache.hit_io` after measuring (bench/cache_bench.py): `sendfile`
(the kernel copies from the page cache to the socket; asyncio's loop.sendfile, which
waits for aiohttp's buffered headers first) or `read` (4 MiB preads in a thread, one
socket write each). Never small chunks through Python. TLS sockets cannot sendfile: `read`.

A remote backend's hit streams its pieces through the loop; one of RELAY_MIN bytes or more
is relayed by a thread when the backend offers a direct source (S3: proxy.cache.s3relay),
under the same cap as the blocking sendfiles, on plain sockets only (as sendfile).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import struct
from collections.abc import Mapping

from aiohttp import web

from proxy.cache import metrics, s3relay
from proxy.cache.backend import Opened
from proxy.cache.flight import Flight
from proxy.cache.offload import off_loop, off_loop_send

READ_SIZE = 4 * 1024 * 1024
# sendfile in slices, each bounded in time: a client that stops reading is dropped.
SLICE = 16 * 1024 * 1024
# Smaller remote hits keep the loop's path: a thread and a connection of its own cost more.
RELAY_MIN = 8 * 1024 * 1024


class ReaderAborted(Exception):
    """The body cannot be finished: `reason` is client | upstream | digest."""

    def __init__(self, reason: str, sent: int, response: web.StreamResponse | None = None) -> None:
        super().__init__(f"cache reader aborted ({reason}) after {sent} bytes")
        self.reason = reason
        self.sent = sent
        self.response = response


class Sender:
    def __init__(self, request: web.Request, resp: web.StreamResponse, fd: int, mode: str, idle: float) -> None:
        self.request, self.resp, self.fd, self.idle = request, resp, fd, idle
        self.mode = mode
        if request.transport is None or request.transport.get_extra_info("sslcontext") is not None:
            self.mode = "read"
        self.sent = 0

    async def send(self, offset: int, count: int) -> None:
        try:
            if self.mode == "sendfile":
                await self._sendfile(offset, count)
            else:
                await self._read(offset, count)
        except (ConnectionError, TimeoutError):
            raise ReaderAborted("client", self.sent) from None
        metrics.BYTES.labels("cache").inc(count)

    async def _sendfile(self, offset: int, count: int) -> None:
        transport = self.request.transport
        if transport is None:
            raise ConnectionResetError
        sock = transport.get_extra_info("socket")
        if sock is None or _Blocking.active >= _Blocking.limit:
            await self._loop_sendfile(offset, count)
            return
        # As the bare server does: one blocking sendfile in a thread, the kernel waiting on the
        # socket (no wakeup of the loop per socket buffer). The loop stops reading this
        # connection meanwhile, and aiohttp's buffered bytes (the headers) go out first.
        await _drained(self.request)
        transport.pause_reading()
        _Blocking.active += 1
        try:
            self.sent += await off_loop_send(_blocking_sendfile, sock.fileno(), self.fd, offset, count, self.idle)
        finally:
            _Blocking.active -= 1
            if not transport.is_closing():
                transport.resume_reading()

    async def _loop_sendfile(self, offset: int, count: int) -> None:
        """asyncio's sendfile: non-blocking, on the loop (when many blocking sends run already)."""
        transport = self.request.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        # A view of the shared descriptor: loop.sendfile wants a file object; offsets are explicit.
        with io.FileIO(self.fd, "r", closefd=False) as f:
            end = offset + count
            while offset < end:
                n = min(SLICE, end - offset)
                try:
                    async with asyncio.timeout(self.idle):
                        await loop.sendfile(transport, f, offset, n, fallback=False)
                except (NotImplementedError, RuntimeError):
                    self.mode = "read"  # this transport cannot sendfile: read the rest
                    await self._read(offset, end - offset)
                    return
                offset += n
                self.sent += n

    async def _read(self, offset: int, count: int) -> None:
        end = offset + count
        while offset < end:
            chunk = await off_loop(os.pread, self.fd, min(READ_SIZE, end - offset), offset)
            if not chunk:
                raise ReaderAborted("upstream", self.sent)  # shorter than it said: never a short 200
            async with asyncio.timeout(self.idle):
                await self.resp.write(chunk)
            offset += len(chunk)
            self.sent += len(chunk)


class _Blocking:
    """Hits sent by a blocking sendfile in a thread right now; beyond `limit`, the loop's own."""

    active = 0
    limit = 32


def _blocking_sendfile(transport_fd: int, file_fd: int, offset: int, count: int, idle: float) -> int:
    """Send `count` bytes at `offset`; each wait for the client bounded by `idle` (SO_SNDTIMEO).
    On a descriptor of our own: if the loop closes the transport's meanwhile, its number can
    never be reused under this thread for another client's connection."""
    sock_fd = os.dup(transport_fd)
    was_blocking = os.get_blocking(sock_fd)
    sock = socket.socket(fileno=sock_fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(idle), 0))
        os.set_blocking(sock_fd, True)
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
            except BlockingIOError:  # SO_SNDTIMEO passed with no progress: the client stopped reading
                raise TimeoutError from None
            if n == 0:
                raise ConnectionResetError("the file ended early")
            sent += n
        return sent
    finally:
        os.set_blocking(sock_fd, was_blocking)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
        sock.close()  # our duplicate only


async def _drained(request: web.Request) -> None:
    """Until the transport's buffer is empty (a zero high-water mark pauses the writer till then)."""
    transport = request.transport
    if transport is None or transport.get_write_buffer_size() == 0:
        return
    transport.set_write_buffer_limits(high=0)
    try:
        await request.writer.drain()
    finally:
        transport.set_write_buffer_limits()


async def _relayed(request: web.Request, opened: Opened, start: int, count: int, idle: float) -> bool:
    """True when a thread sent the bytes (proxy.cache.s3relay); False when this path cannot be
    taken (no direct source, a TLS client, the threads all busy, the endpoint unreachable
    before anything was sent): the caller streams them on the loop."""
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None or _Blocking.active >= _Blocking.limit:
        return False
    source = opened.direct_source()
    if source is None:
        return False
    _Blocking.active += 1
    try:
        await _drained(request)  # the headers out first; then the loop leaves this socket alone
        transport.pause_reading()
        try:
            await s3relay.relay(source, start, count, sock.fileno(), idle)
        finally:
            if not transport.is_closing():
                transport.resume_reading()
    except s3relay.Unavailable:
        metrics.RELAYS.labels("fallback").inc()
        return False
    except s3relay.ClientGone as exc:
        metrics.RELAYS.labels("client").inc()
        raise ReaderAborted("client", exc.sent) from None
    except ConnectionError:  # gone before the relay began (flushing the headers)
        raise ReaderAborted("client", 0) from None
    except (s3relay.UpstreamFailed, s3relay.Refused) as exc:
        metrics.RELAYS.labels("upstream").inc()
        raise ReaderAborted("upstream", getattr(exc, "sent", 0)) from None
    finally:
        _Blocking.active -= 1
    metrics.RELAYS.labels("done").inc()
    return True


def parse_range(value: str | None, size: int) -> tuple[int, int] | bool | None:
    """`bytes=a-b` -> (start, end inclusive); None: no range; False: not satisfiable."""
    if value is None:
        return None
    spec = value.strip().removeprefix("bytes=")
    first, _, last = spec.partition("-")
    if first == "":
        if not last.isdigit() or int(last) == 0:
            return False
        n = min(int(last), size)
        return (size - n, size - 1) if size else False
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return False
    return start, min(end, size - 1)


async def send_object(
    request: web.Request,
    opened: Opened,
    headers: Mapping[str, str],
    mode: str,
    idle: float,
) -> web.StreamResponse:
    """A hit: the whole object or one range of it. The caller closes `opened`."""
    size = opened.size
    wanted = parse_range(request.headers.get("Range"), size)
    out = dict(headers)
    out["Accept-Ranges"] = "bytes"
    if wanted is False:
        return web.Response(status=416, headers={**out, "Content-Range": f"bytes */{size}"})
    status, start, count = 200, 0, size
    if isinstance(wanted, tuple):
        status, start, count = 206, wanted[0], wanted[1] - wanted[0] + 1
        out["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
    resp = web.StreamResponse(status=status, headers=out)
    resp.content_length = count
    await resp.prepare(request)
    if request.method == "HEAD" or count == 0:
        await resp.write_eof()
        return resp
    fd = opened.fileno()
    try:
        if fd is None:  # a remote backend: ranged reads
            await _send_remote(request, resp, opened, start, count, idle)
        else:
            await Sender(request, resp, fd, mode, idle).send(start, count)
    except ReaderAborted as exc:
        raise ReaderAborted(exc.reason, exc.sent, resp) from None
    await resp.write_eof()
    return resp


async def _send_remote(
    request: web.Request, resp: web.StreamResponse, opened: Opened, start: int, count: int, idle: float
) -> None:
    if count >= RELAY_MIN and await _relayed(request, opened, start, count, idle):
        metrics.BYTES.labels("cache").inc(count)
        return
    sent = 0
    async with contextlib.aclosing(opened.chunks(start, count)) as chunks:
        async for chunk in chunks:  # each piece out as it arrives: no 4 MiB gathering
            try:
                async with asyncio.timeout(idle):
                    await resp.write(chunk)
            except (ConnectionError, TimeoutError):
                raise ReaderAborted("client", sent) from None
            sent += len(chunk)
    if sent < count:
        raise ReaderAborted("upstream", sent)  # shorter than it said: never a short 200
    metrics.BYTES.labels("cache").inc(sent)


async def send_growing(
    request: web.Request, flight: Flight, headers: Mapping[str, str], mode: str, idle: float
) -> tuple[web.StreamResponse, int]:
    """Tail a fetch's file from its first byte; the end goes out only once verified.
    Raises the fetch's error if it failed before its first byte (nothing was sent);
    ReaderAborted (with the prepared response) if it failed after."""
    await flight.started
    resp = web.StreamResponse(status=200, headers=dict(headers))
    if flight.length is not None:
        resp.content_length = flight.length
    else:
        mode = "read"  # chunked framing: the bytes go through the writer
    if flight.media_type and "Content-Type" not in headers:
        resp.headers["Content-Type"] = flight.media_type
    await resp.prepare(request)
    if request.transport is not None:
        request.transport.set_write_buffer_limits(high=2 * READ_SIZE)
    fd = flight.fd
    assert fd is not None, "a started flight has its file"
    sender = Sender(request, resp, fd, mode, idle)
    try:
        offset = 0
        while True:
            limit = flight.readable()
            if offset < limit:
                await sender.send(offset, limit - offset)
                offset = limit
                continue
            if flight.verified and offset >= flight.written:
                break  # not waiting for the publish (an fsync): the bytes are whole and right
            if flight.finished:
                raise ReaderAborted(flight.failed.reason if flight.failed else "upstream", offset)
            try:
                async with asyncio.timeout(idle * 2):
                    await flight.progress()
            except TimeoutError:
                raise ReaderAborted("upstream", offset) from None
    except ReaderAborted as exc:
        raise ReaderAborted(exc.reason, exc.sent, resp) from None
    await resp.write_eof()
    return resp, offset
