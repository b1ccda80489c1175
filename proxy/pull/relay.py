"""Copy an upstream answer to the client: headers chosen, body streamed.

Large chunks with backpressure (each write waits for the socket to drain), so
memory stays flat whatever the blob size. If the upstream breaks after the
first byte, the client connection is aborted: the client must see a failure,
never a clean short body. The same goes for a body requested by digest whose
bytes hash to something else, and for a client reading slower than
`limits.min_stream_rate` (proxy.pull.pace).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy import metrics
from proxy.oci.digest import Verifier
from proxy.oci.errors import ErrorCode, OCICode, OCIError, PullgateCode, lookup
from proxy.pull.pace import StreamPace

log = logging.getLogger("pullgate.relay")

PASSED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Docker-Content-Digest",
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "OCI-Filters-Applied",
    "Last-Modified",
    # Docker Hub's pull allowance, so clients can see it too.
    "RateLimit-Limit",
    "RateLimit-Remaining",
)
MAX_ERROR_BODY = 64 * 1024


class StreamAborted(Exception):
    """The stream broke mid-body; the client connection is aborted.

    `reason` says which side: `upstream` (it broke or sent too little), `client`
    (it went away or stopped reading), `slow` (below `limits.min_stream_rate`) or
    `digest` (the bytes do not hash to the digest asked for).
    """

    def __init__(self, response: web.StreamResponse, sent: int, reason: str) -> None:
        super().__init__(f"stream aborted ({reason}) after {sent} bytes")
        self.response = response
        self.sent = sent
        self.reason = reason


@dataclass(frozen=True)
class Pace:
    """`limits.min_stream_rate` over `limits.min_stream_window` seconds; 0 turns it off."""

    min_rate: int = 0
    window: float = 30.0


def passed_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {h: upstream.headers[h] for h in PASSED_HEADERS if h in upstream.headers}


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    chunk_size: int,
    extra_headers: dict[str, str] | None = None,
    idle_timeout: float = 60.0,
    verify: str | None = None,
    pace: Pace = Pace(),
) -> tuple[web.StreamResponse, int]:
    """Stream `upstream` to the client; returns the response and bytes sent.

    With `verify` (a digest), the body is hashed as it passes and its last chunk
    is held back until the hash is known: on a mismatch the client never gets a
    complete body, whatever the framing.
    """
    headers = passed_headers(upstream)
    if extra_headers:
        headers.update(extra_headers)
    resp = web.StreamResponse(status=upstream.status, headers=headers)
    expected = upstream.content_length
    if request.method == "HEAD" or upstream.status == 304:
        if expected is not None:
            resp.content_length = expected
        await resp.prepare(request)
        await resp.write_eof()
        return resp, 0
    await resp.prepare(request)
    if request.transport is not None:
        # Fewer, larger socket writes: let the kernel-side buffer hold a few chunks.
        request.transport.set_write_buffer_limits(high=2 * chunk_size)
    guard = StreamPace(request.transport, pace.min_rate, pace.window, lambda: abort_connection(request))
    copier = _Copier(request, upstream, resp, chunk_size, expected, idle_timeout, guard)
    with metrics.STREAMS_IN_FLIGHT.track_inprogress():
        guard.start()
        try:
            sent = await copier.run(Verifier(verify) if verify else None)
            try:
                async with asyncio.timeout(idle_timeout):
                    guard.waiting_on_client = True
                    await _flush(request)
            except (ConnectionError, TimeoutError):
                raise copier.client_failed() from None
        finally:
            guard.stop()
    await resp.write_eof()
    return resp, sent


async def _flush(request: web.Request) -> None:
    """Wait until the socket took every buffered byte of the body.

    With a large write buffer the handler can finish while megabytes still sit
    in the transport; a graceful shutdown that closes the loop then would cut
    the tail of a stream it promised to finish.
    """
    transport = request.transport
    if transport is None:
        return
    # A zero high-water mark pauses the writer until the buffer is empty.
    transport.set_write_buffer_limits(high=0)
    try:
        await request.writer.drain()
    finally:
        transport.set_write_buffer_limits()


class _Copier:
    """One body copy: upstream chunks to the client, with backpressure."""

    def __init__(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        resp: web.StreamResponse,
        chunk_size: int,
        expected: int | None,
        idle_timeout: float,
        guard: StreamPace,
    ) -> None:
        self.request, self.upstream, self.resp = request, upstream, resp
        self.chunk_size, self.expected, self.idle_timeout = chunk_size, expected, idle_timeout
        self.guard = guard
        self.sent = 0

    async def run(self, verifier: Verifier | None) -> int:
        held: bytes | None = None  # with a verifier, the last chunk waits for the hash
        received = 0
        while True:
            try:
                chunk, _ = await self.upstream.content.readchunk()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("upstream failed mid-body after %d bytes: %s", self.sent, type(exc).__name__)
                chunk = None
            if not chunk:
                if chunk is None or (self.expected is not None and received != self.expected):
                    raise self._failed("upstream")
                break
            received += len(chunk)
            if verifier is None:
                await self._write(chunk)
                continue
            # Inline: measured on a 512 MiB blob (sha256 about 0.6 ms/MiB here), hashing in a
            # thread, even overlapped with the socket write, was no faster; and in the shared
            # default executor it would queue behind the store's calls.
            verifier.update(chunk)
            if held is not None:
                await self._write(held)
            held = chunk
        if verifier is not None and not verifier.matches():
            raise self._failed("digest")
        if held is not None:
            await self._write(held)
        return self.sent

    async def _write(self, chunk: bytes) -> None:
        self.guard.pushed += len(chunk)
        self.guard.waiting_on_client = True
        try:
            # A client that stops reading for the idle timeout is dropped.
            async with asyncio.timeout(self.idle_timeout):
                await self.resp.write(chunk)
        except (ConnectionError, TimeoutError):
            # The client went away (or was dropped): stop reading upstream at once.
            raise self.client_failed() from None
        finally:
            self.guard.waiting_on_client = False
        self.sent += len(chunk)

    def client_failed(self) -> StreamAborted:
        return self._failed("slow" if self.guard.dropped else "client")

    def _failed(self, reason: str) -> StreamAborted:
        metrics.STREAMS_ABORTED.labels(reason).inc()
        abort_connection(self.request)
        return StreamAborted(self.resp, self.sent, reason)


def abort_connection(request: web.Request) -> None:
    """Cut the client off now: a reset, so bytes still queued in the kernel are dropped
    too and even a slow reader sees the failure at once."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def upstream_error(upstream: aiohttp.ClientResponse, kind: str, slug: str) -> OCIError:
    """Map an upstream non-success answer to the client's OCI error."""
    status = upstream.status
    # Only a code pullgate declares is relayed: a client never sees a string it cannot look up.
    raw_code, message = await _read_error(upstream)
    code = lookup(raw_code) if raw_code else None
    if status == 404 and kind == "referrers":
        return referrers_not_found(code, message)
    if status == 404:
        default = {"manifests": OCICode.MANIFEST_UNKNOWN, "blobs": OCICode.BLOB_UNKNOWN}.get(kind, OCICode.NAME_UNKNOWN)
        allowed = {OCICode.MANIFEST_UNKNOWN, OCICode.BLOB_UNKNOWN, OCICode.NAME_UNKNOWN}
        return OCIError(code if code in allowed else default, message or "not found")
    if status == 416:
        headers = {"Content-Range": upstream.headers["Content-Range"]} if "Content-Range" in upstream.headers else {}
        return OCIError(PullgateCode.RANGE_INVALID, "requested range not satisfiable", headers=headers)
    if status == 429:
        retry = upstream.headers.get("Retry-After", "60")
        return OCIError(
            OCICode.TOOMANYREQUESTS,
            f"registry {slug!r} is rate limiting the proxy",
            headers={"Retry-After": retry if retry.isdigit() else "60"},
        )
    if status == 403:
        message = f"the vendor's registry {slug!r} refused the proxy's credentials (upstream status 403)"
        return OCIError(PullgateCode.UPSTREAM_ERROR, message)
    if status == 503:
        return OCIError(PullgateCode.UPSTREAM_UNAVAILABLE, f"registry {slug!r} is unavailable")
    if status >= 500:
        return OCIError(PullgateCode.UPSTREAM_ERROR, f"registry {slug!r} answered {status}")
    if 400 <= status < 500 and code is not None:
        # The upstream's own status: it decided this answer (e.g. NAME_INVALID with 400).
        return OCIError(code, message or "upstream refused the request", status=status)
    return OCIError(PullgateCode.UPSTREAM_ERROR, f"registry {slug!r} answered {status}")


def referrers_not_found(code: ErrorCode | None, message: str | None) -> OCIError:
    """An upstream 404 on `referrers/<digest>`. Only NAME_UNKNOWN means the repository is
    unknown; any other 404 (distribution 2.8 answers a plain-text one: it has no such
    route) means the registry has no referrers API. The OCI distribution spec ("Unavailable
    Referrers API") has the client fall back to the referrers tag schema on a 404, and
    oras-go does so for every 404 whose code is not NAME_UNKNOWN: so that one is answered
    with another code (UNSUPPORTED, keeping the upstream's 404), never NAME_UNKNOWN."""
    if code is OCICode.NAME_UNKNOWN:
        return OCIError(OCICode.NAME_UNKNOWN, message or "repository name not known to registry")
    return OCIError(
        OCICode.UNSUPPORTED,
        "the vendor's registry has no referrers API: use the referrers tag schema",
        status=404,  # the spec's signal for "no referrers API", decided by the upstream
    )


async def _read_error(upstream: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    try:
        body = await upstream.content.read(MAX_ERROR_BODY)
        data = json.loads(body)
        first = data["errors"][0]
        code = str(first.get("code", "")).upper() or None
        message = str(first.get("message", ""))[:200] or None
        return code, message
    except Exception:
        return None, None
