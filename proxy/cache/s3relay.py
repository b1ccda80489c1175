"""A large S3 hit relayed by a thread: one GET of the object (a presigned URL, so no header
is signed) with blocking calls, the GIL released. A plain-HTTP endpoint's body is spliced
socket -> pipe -> client socket (no copy through the process); over https it is read into
one reused buffer and written. On the event loop the same bytes cost 1.1-1.4 s of CPU per
GiB (aiohttp's client parser, Python, aiohttp's writer), which capped a hit near 0.3-0.45x
a direct GET; relayed, 0.3-0.4 s and 0.62-0.69x (bench/README.md, s3_bench).

Egress as everywhere else: the endpoint's host is resolved on the loop, every address is
judged by the process's EgressPolicy, and the thread connects only to a judged address
(pinned: it resolves nothing). https is verified against the system's CA store with the
host's name, as aiohttp's default context does for the S3 client.

Exact or nothing: the answer must be 200 (whole object) or 206 with the Content-Range asked
for, and the Content-Length the caller expects; a body that breaks off raises
UpstreamFailed with the bytes sent (the caller aborts the response: never a short 200).
Before the answer's headers arrive nothing has been sent, so a failure to connect raises
Unavailable (the caller falls back to its own path, which retries). The client's socket is
non-blocking (the loop's): each wait for it is a poll bounded by `idle`. `stop()` from the
loop (a cancelled request) shuts the upstream connection down and wakes the poll.

The presigned URL is a credential for its 60 s: never logged, never in an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import logging
import os
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.cache.offload import off_loop_send
from proxy.egress import EgressPolicy, Refusal

log = logging.getLogger("pullgate.cache.s3")

BUFFER = 2 * 1024 * 1024  # one read from upstream, one write to the client
PIPE = 1024 * 1024  # the splice pipe (Linux's default pipe-max-size for an unprivileged process)
SPLICE = hasattr(os, "splice")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class DirectSource:
    """Where one object can be fetched from with a plain GET: `url` is presigned (a
    credential: kept out of repr), `size` the object's, `policy` the process's egress policy."""

    url: str = field(repr=False)
    size: int
    policy: EgressPolicy
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


class Unavailable(Exception):
    """Nothing was sent and the endpoint could not be reached this way: use another path."""


class Refused(Exception):
    """The egress policy refused an address of the endpoint: nothing was connected."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"refused by the egress policy: {refusal.rule}")
        self.refusal = refusal


class RelayFailed(Exception):
    def __init__(self, sent: int) -> None:
        super().__init__(f"{type(self).__name__} after {sent} bytes")
        self.sent = sent


class UpstreamFailed(RelayFailed):
    """The answer was not the bytes asked for, or broke off."""


class ClientGone(RelayFailed):
    """The client closed its connection, or stopped reading for `idle` seconds."""


class Stopped(RelayFailed):
    """`stop()` was called (the request was cancelled)."""


def host_header(url: str) -> str:
    """The Host the URL was presigned for (botocore's rule: lowercase, no default port)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def range_header(start: int, count: int, size: int) -> str | None:
    """None for the whole object (a 200), else the Range asking for [start, start + count)."""
    if start == 0 and count == size:
        return None
    return f"bytes={start}-{start + count - 1}"


def answer_ok(status: int, headers: http.client.HTTPMessage, start: int, count: int, size: int) -> bool:
    """Exactly the bytes asked for: the status, the length and (206) the range."""
    if headers.get("Transfer-Encoding") is not None or headers.get("Content-Encoding") not in (None, "identity"):
        return False
    if headers.get("Content-Length", "").strip() != str(count):
        return False
    if range_header(start, count, size) is None:
        return status == 200
    return status == 206 and headers.get("Content-Range", "").strip() == f"bytes {start}-{start + count - 1}/{size}"


async def resolve(url: str, policy: EgressPolicy) -> list[tuple[int, tuple[str, int]]]:
    """(family, address) of every address of the URL's host, each judged by the policy: one
    refused address refuses the endpoint (as GuardedConnector does). Unavailable when the
    name does not resolve."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise Unavailable("the endpoint does not resolve") from None
    out: list[tuple[int, tuple[str, int]]] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = (str(sockaddr[0]), int(sockaddr[1]))
        refusal = policy.check(address[0], address[1])
        if refusal is not None:
            log.warning(
                "S3 cache: an address of the bucket's endpoint was refused by the egress policy: %s; rule %s; %s",
                refusal.reason,
                refusal.rule,
                refusal.advice(),
            )
            raise Refused(refusal)
        out.append((family, address))
    if not out:
        raise Unavailable("the endpoint has no address")
    return out


class Relay:
    """One relay: `run` in a thread, `stop` from the loop."""

    def __init__(
        self, source: DirectSource, addresses: list[tuple[int, tuple[str, int]]], start: int, count: int, idle: float
    ) -> None:
        self.source, self.addresses = source, addresses
        self.start, self.count, self.idle = start, count, idle
        self.sent = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._kill: socket.socket | None = None  # a duplicate of the upstream socket, to shut it down
        self._wake_r, self._wake_w = os.pipe()

    def stop(self) -> None:
        """From any thread: the relay ends at its next step (a blocked read or poll wakes)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._kill is not None:
                with contextlib.suppress(OSError):
                    self._kill.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def run(self, client_fd: int) -> int:
        """Relay the bytes to `client_fd` (owned: closed here). Returns the bytes sent."""
        upstream: socket.socket | None = None
        resp: http.client.HTTPResponse | None = None
        try:
            upstream = self._connect()
            resp = self._request(upstream)
            if SPLICE and not isinstance(upstream, ssl.SSLSocket):
                self._splice(resp, upstream, client_fd)
            else:
                self._pump(resp, client_fd)
            return self.sent
        finally:
            os.close(client_fd)
            if resp is not None:
                resp.close()  # its file holds a reference to the socket: the socket closes last
            with self._lock:
                kill, self._kill = self._kill, None
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
            if kill is not None:
                kill.close()
            if upstream is not None:
                upstream.close()

    def _check(self) -> None:
        if self._stopped:
            raise Stopped(self.sent)

    def _connect(self) -> socket.socket:
        """To the first judged address that answers (never another lookup here)."""
        parts = urlsplit(self.source.url)
        for family, address in self.addresses:
            self._check()
            sock = socket.socket(family, socket.SOCK_STREAM)
            with self._lock:
                if self._stopped:
                    sock.close()
                    raise Stopped(0)
                self._kill = socket.socket(fileno=os.dup(sock.fileno()))
            try:
                sock.settimeout(self.source.connect_timeout)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if parts.scheme == "https":
                    sock = _tls_context().wrap_socket(sock, server_hostname=parts.hostname)
                sock.settimeout(self.source.read_timeout)
                return sock
            except (OSError, ssl.SSLError):
                sock.close()
                with self._lock:
                    kill, self._kill = self._kill, None
                if kill is not None:
                    kill.close()
        self._check()
        raise Unavailable("the endpoint did not answer")

    def _request(self, sock: socket.socket) -> http.client.HTTPResponse:
        parts = urlsplit(self.source.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
        conn.sock = sock  # connected above, to a judged address
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        size = self.source.size
        try:  # on failure the caller closes `sock`; the connection object holds nothing else
            conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host_header(self.source.url))
            conn.putheader("User-Agent", "pullgate")
            rng = range_header(self.start, self.count, size)
            if rng is not None:
                conn.putheader("Range", rng)
            conn.endheaders()
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            self._check()
            raise Unavailable("no answer") from None  # nothing sent to the client yet
        if not answer_ok(resp.status, resp.headers, self.start, self.count, size):
            resp.close()
            log.warning("S3 cache: a relayed GET was answered HTTP %d, not the bytes asked for", resp.status)
            raise UpstreamFailed(0)
        return resp

    def _pump(self, resp: http.client.HTTPResponse, client_fd: int) -> None:
        buf = memoryview(bytearray(min(BUFFER, self.count)))
        poller = select.poll()
        poller.register(client_fd, select.POLLOUT)
        poller.register(self._wake_r, select.POLLIN)
        while self.sent < self.count:
            want = buf[: min(len(buf), self.count - self.sent)]
            try:
                n = resp.readinto(want)
            except (OSError, http.client.HTTPException):
                n = 0
            self._check()
            if n == 0:
                raise UpstreamFailed(self.sent)  # shorter than it said
            self._send(client_fd, want[:n], poller)
            self.sent += n

    def _splice(self, resp: http.client.HTTPResponse, sock: socket.socket, client_fd: int) -> None:
        """Plain HTTP upstream: the kernel moves the body socket -> pipe -> socket (splice), no
        copy through this process. What http.client buffered past the headers goes first."""
        poller = select.poll()
        poller.register(client_fd, select.POLLOUT)
        poller.register(self._wake_r, select.POLLIN)
        assert resp.fp is not None
        head = resp.fp.read1(65536)  # only the buffered bytes (at most 8 KiB) when there are any
        self._check()
        if head:
            self._send(client_fd, memoryview(head)[: self.count], poller)
            self.sent += min(len(head), self.count)
        # Blocking reads, each bounded by the read timeout (SO_RCVTIMEO: splice honours it).
        sock.settimeout(None)
        timeout = self.source.read_timeout
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout), 0))
        pipe_r, pipe_w = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE)
            upstream_fd = sock.fileno()
            while self.sent < self.count:
                try:
                    n = os.splice(upstream_fd, pipe_w, min(PIPE, self.count - self.sent), flags=os.SPLICE_F_MOVE)
                except OSError:  # BlockingIOError: the read timeout passed; or a reset
                    n = 0
                self._check()
                if n == 0:
                    raise UpstreamFailed(self.sent)  # shorter than it said
                self._splice_out(pipe_r, client_fd, n, poller)
                self.sent += n
        finally:
            os.close(pipe_r)
            os.close(pipe_w)

    def _splice_out(self, pipe_r: int, fd: int, n: int, poller: select.poll) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        self._push(n, lambda left: os.splice(pipe_r, fd, left, flags=flags), poller)

    def _send(self, fd: int, data: memoryview, poller: select.poll) -> None:
        size = len(data)
        self._push(size, lambda left: os.write(fd, data[size - left :]), poller)

    def _push(self, n: int, write: Callable[[int], int], poller: select.poll) -> None:
        """`write(left)` until `n` bytes are out to the client's non-blocking socket; a client
        that takes nothing for `idle` seconds is dropped (not reading)."""
        while n:
            try:
                n -= write(n)
                continue
            except BlockingIOError:
                pass
            except OSError:
                raise ClientGone(self.sent) from None
            ready = poller.poll(self.idle * 1000)
            self._check()
            if not ready:
                raise ClientGone(self.sent)


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:  # loads the CA store once (a race only builds it twice)
        _TLS = ssl.create_default_context()
    return _TLS


async def relay(source: DirectSource, start: int, count: int, client_fd: int, idle: float) -> int:
    """Relay [start, start + count) of the object to the socket `client_fd` (not owned: the
    thread works on a duplicate, so a transport closed meanwhile never lends its number to
    another connection). The bytes sent; Refused, Unavailable, UpstreamFailed, ClientGone."""
    addresses = await resolve(source.url, source.policy)
    job = Relay(source, addresses, start, count, idle)
    task = asyncio.ensure_future(off_loop_send(job.run, os.dup(client_fd)))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        job.stop()  # the thread ends at once; the caller's cancellation goes on after it
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: Stopped, expected
        raise
