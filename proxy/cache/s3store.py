"""The S3 backend of the cache: the filesystem layout in a bucket, written verified.

Keys: `<cache.s3.prefix>blobs/<algorithm>/<2 hex>/<hex>`, the same as the filesystem
backend's paths, so every replica finds what any one of them stored.

Written verified, never visible half-written. An upload is a multipart upload kept
*uncompleted* while the bytes stream: S3 shows nothing under the key until
CompleteMultipartUpload, which `publish` sends only after the caller's hasher matched the
digest; `discard` aborts it (the parts are dropped). An object smaller than one part is
sent as one PutObject at `publish`. Parts are `part_size` (8 MiB) and at most `inflight`
(2) are sent at once while the next fills, so an upload holds about (inflight + 1) parts of
memory whatever the blob's size. Every chunk also goes to a local spool file (`path`), which
single-flight followers read while it grows, as they read the filesystem backend's file.

Multipart uploads a crash left behind are aborted at `start`, but only those begun more than
`stale_upload_seconds` ago: several replicas share the bucket, and another one's upload in
progress is not a leftover.

Reads: `open` asks the size (HEAD); `read(offset, length)` streams one ranged GET from the
first offset to the end and serves the following sequential reads from it (a new GET only
when the caller seeks), `stream` yields large chunks of a range. `presigned_url` signs a GET
locally (for `cache.s3.redirect`: 307, 60 s). `ready` is HeadBucket (readiness).

Egress: the client connects through the connector the caller passes; the app passes the
egress-guarded one (proxy.upstream.connector.GuardedConnector) with the process policy, so
the bucket's endpoint is judged at connect time like a registry (an on-premises endpoint on a
private address needs its `upstream.egress_allow` entry). A large hit's relay thread
(proxy.cache.s3relay, through `S3Opened.direct_source`) makes its own connection, to an
address the same policy judged on the loop (`policy`, given by the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp

from proxy.cache.backend import StoredObject
from proxy.cache.s3client import ConnectorFactory, S3Client, S3Endpoint, S3Error
from proxy.cache.s3relay import DirectSource
from proxy.cache.spool import LocalSpool, writer_alive
from proxy.egress import EgressPolicy
from proxy.oci.grammar import KNOWN_DIGESTS
from proxy.settings import CacheS3Section, read_secret

log = logging.getLogger("pullgate.cache.s3")

MiB = 1 << 20
PART_SIZE = 8 * MiB  # S3's minimum part is 5 MiB (the last excepted); at most 10,000 parts
MAX_PART_SIZE = 64 * MiB
INFLIGHT = 2
READ_CHUNK = 1 * MiB
MAX_PARTS = 10_000
PRESIGN_SECONDS = 60
STALE_UPLOAD_SECONDS = 24 * 3600
DISCARD_WAIT = 30.0


def object_key(prefix: str, digest: str) -> str:
    """`<prefix>blobs/<algorithm>/<2 hex>/<hex>` for a well-formed digest; ValueError otherwise
    (a key is never built from anything else)."""
    algorithm, _, hexpart = digest.partition(":")
    size = KNOWN_DIGESTS.get(algorithm)
    if size is None or len(hexpart) != size or not all(c in "0123456789abcdef" for c in hexpart):
        raise ValueError("not a digest")
    return f"{prefix}blobs/{algorithm}/{hexpart[:2]}/{hexpart}"


def digest_of_key(prefix: str, key: str) -> str | None:
    """The inverse of object_key, None for any other key under the prefix."""
    rest = key[len(prefix) :] if key.startswith(prefix) else None
    parts = rest.split("/") if rest else []
    if len(parts) != 4 or parts[0] != "blobs":
        return None
    digest = f"{parts[1]}:{parts[3]}"
    try:
        ok = object_key(prefix, digest) == key
    except ValueError:
        return None
    return digest if ok else None


def part_size_for(expected_size: int | None, base: int = PART_SIZE) -> int:
    """`base`, or larger when a blob of `expected_size` would need more than 10,000 parts
    (S3's limit: 80 GiB at 8 MiB), rounded up to whole MiB and capped at MAX_PART_SIZE."""
    if expected_size is None or expected_size <= base * MAX_PARTS:
        return base
    need = -(-expected_size // MAX_PARTS)
    return min(MAX_PART_SIZE, -(-need // MiB) * MiB)


class S3Upload:
    """One object being written: parts stream to S3, bytes to the local spool for followers."""

    def __init__(self, client: S3Client, key: str, spool: LocalSpool, part_size: int, inflight: int = INFLIGHT) -> None:
        self._client = client
        self.key = key
        self._spool = spool
        self._part_size = part_size
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(inflight)
        self._failed: BaseException | None = None
        self._next = 1
        self.size = 0
        self.published = False
        self._done = False

    @property
    def path(self) -> Path:
        return self._spool.path

    async def write(self, chunk: bytes) -> None:
        await self.write_many((chunk,))

    async def write_many(self, chunks: Sequence[bytes], each: Callable[[bytes], None] | None = None) -> None:
        if self._done:
            raise RuntimeError("write after publish or discard")
        self._raise_failed()
        await self._spool.write_many(chunks, each)
        for chunk in chunks:
            self._buf += chunk
            self.size += len(chunk)
        while len(self._buf) >= self._part_size:
            body = self._buf[: self._part_size]
            del self._buf[: self._part_size]
            await self._send(body)

    async def _send(self, body: bytearray) -> None:
        if self._next > MAX_PARTS:
            raise S3Error("UploadPart", 0, "TooManyParts")
        if self._upload_id is None:
            self._upload_id = await self._client.create_multipart(self.key)
        await self._slots.acquire()  # backpressure: the caller's next write waits for a free slot
        self._raise_failed(release=True)
        number, self._next = self._next, self._next + 1
        task = asyncio.create_task(self._part(number, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _part(self, number: int, body: bytearray) -> None:
        try:
            assert self._upload_id is not None
            etag = await self._client.upload_part(self.key, self._upload_id, number, body)
            self._parts.append((number, etag))
        except BaseException as exc:
            self._failed = self._failed or exc
        finally:
            self._slots.release()

    def _raise_failed(self, release: bool = False) -> None:
        if self._failed is not None:
            if release:
                self._slots.release()
            raise S3Error("UploadPart", 0, "failed") from self._failed

    async def publish(self) -> None:
        """Complete the verified object under its key (atomic: nothing was visible before)."""
        if self.published:
            return
        if self._done:
            raise RuntimeError("publish after discard")
        try:
            if self._upload_id is None:
                await self._client.put(self.key, bytes(self._buf))
            else:
                if self._buf:
                    await self._send(self._buf)
                    self._buf = bytearray()
                await asyncio.gather(*list(self._tasks))
                self._raise_failed()
                await self._client.complete_multipart(self.key, self._upload_id, self._parts)
        except BaseException:
            await self.discard()
            raise
        self.published = True
        self._done = True
        self._buf = bytearray()
        await self._spool.discard()

    async def discard(self) -> None:
        """Abort: the parts sent are dropped and the key stays as it was. Safe to repeat, and a
        no-op after publish."""
        if self.published:
            return
        self._done = True
        self._buf = bytearray()
        # Parts in flight are let finish first: one the server completes after the abort would
        # bring the upload back (S3 says so: "abort again"). At most `inflight` parts, bounded.
        tasks = list(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=DISCARD_WAIT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                await self._client.abort_multipart(self.key, upload_id)
            except S3Error as exc:  # start() sweeps it later
                log.warning("S3 cache: could not abort an upload (%s); it is swept at a later start", exc)
        await self._spool.discard()


class S3Opened:
    """An object opened for reading: its size known, its bytes fetched by ranged GETs."""

    def __init__(self, client: S3Client, key: str, size: int, policy: EgressPolicy | None = None) -> None:
        self._client = client
        self.key = key
        self._size = size
        self._policy = policy
        self._stream: contextlib.AsyncExitStack | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._pos = -1  # where the open GET's next byte is

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int | None:
        return None

    def direct_source(self) -> DirectSource | None:
        """A presigned GET for the relay thread, judged by the same egress policy as the
        client's connections (none given, as in tests of the object layer: no relay)."""
        if self._policy is None:
            return None
        url = self._client.presign_get(self.key, PRESIGN_SECONDS)
        c = self._client
        return DirectSource(url, self._size, self._policy, c.connect_timeout, c.read_timeout)

    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the object)."""
        length = max(0, min(length, self._size - offset))
        if length == 0:
            return b""
        if self._resp is None or self._pos != offset:
            await self._reopen(offset)
        assert self._resp is not None
        out = bytearray()
        try:
            while len(out) < length:
                chunk = await self._resp.content.read(length - len(out))
                if not chunk:
                    raise S3Error("GetObject", 0, "ShortBody")
                out += chunk
        except aiohttp.ClientError as exc:  # the body broke off after the headers
            await self._close_stream()
            raise S3Error("GetObject", 0, type(exc).__name__) from None
        self._pos = offset + length
        return bytes(out)

    async def chunks(self, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """As `read`, from the same sequential GET, but each piece as the connection hands it
        over: gathering 4 MiB (a join, a bytearray, a bytes copy) was a third of a hit's CPU."""
        end = offset + max(0, min(length, self._size - offset))
        if offset < end and (self._resp is None or self._pos != offset):
            await self._reopen(offset)
        try:
            while self._pos < end:
                assert self._resp is not None
                # The GET runs to the object's end: when the range does too, a buffered piece
                # never overshoots it, and readchunk hands over one as is (readany and read
                # join all that are buffered: a copy); else at most what is left.
                content = self._resp.content
                if end == self._size:
                    piece, _ = await content.readchunk()  # not chunked (Content-Length): no splits
                else:
                    piece = await content.read(end - self._pos)
                if not piece:
                    raise S3Error("GetObject", 0, "ShortBody")
                self._pos += len(piece)
                yield piece
        except aiohttp.ClientError as exc:  # the body broke off after the headers
            await self._close_stream()
            raise S3Error("GetObject", 0, type(exc).__name__) from None

    async def stream(self, start: int = 0, end: int | None = None, chunk: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The bytes [start, end) in chunks of up to `chunk`, from one GET."""
        end = self._size if end is None else min(end, self._size)
        if start >= end:
            return
        async with self._client.get(self.key, (start, end)) as resp:
            left = end - start
            while left > 0:
                piece = await resp.content.read(min(chunk, left))
                if not piece:
                    raise S3Error("GetObject", 0, "ShortBody")
                left -= len(piece)
                yield piece

    async def _reopen(self, offset: int) -> None:
        await self._close_stream()
        stack = contextlib.AsyncExitStack()
        self._resp = await stack.enter_async_context(self._client.get(self.key, (offset, self._size)))
        self._stream = stack
        self._pos = offset

    async def _close_stream(self) -> None:
        stack, self._stream, self._resp = self._stream, None, None
        if stack is not None:
            await stack.aclose()

    async def close(self) -> None:
        await self._close_stream()


class S3Backend:
    """The cache's S3 backend (the methods of the cache's Backend protocol, plus `ready`
    and `close`)."""

    def __init__(
        self,
        client: S3Client,
        prefix: str,
        spool_dir: Path,
        *,
        part_size: int = PART_SIZE,
        inflight: int = INFLIGHT,
        stale_upload_seconds: float = STALE_UPLOAD_SECONDS,
        policy: EgressPolicy | None = None,
    ) -> None:
        self.client = client
        self.policy = policy  # the egress policy, for the relay thread's own connections
        self.prefix = prefix
        self.spool_dir = spool_dir
        self.part_size = part_size
        self.inflight = inflight
        self.stale_upload_seconds = stale_upload_seconds

    @classmethod
    def from_config(
        cls,
        section: CacheS3Section,
        spool_dir: Path,
        connector: ConnectorFactory,
        base_dir: Path | None = None,
        policy: EgressPolicy | None = None,
    ) -> S3Backend:
        """From the validated `cache.s3` section; the secret is read here, by reference."""
        secret = read_secret(
            "cache.s3.secret_access_key",
            section.secret_access_key_file,
            section.secret_access_key_env,
            base_dir=base_dir,
        )
        endpoint = S3Endpoint(section.endpoint_url, section.region, section.bucket, section.access_key_id, secret or "")
        return cls(S3Client(endpoint, connector), normalize_prefix(section.prefix), spool_dir, policy=policy)

    def key(self, digest: str) -> str:
        return object_key(self.prefix, digest)

    async def start(self) -> None:
        """Make the spool directory, drop a crash's spool files, abort stale uploads."""
        await asyncio.to_thread(_fresh_dir, self.spool_dir)
        cutoff = time.time() - self.stale_upload_seconds
        for key, upload_id, initiated in await self.client.list_uploads(self.prefix + "blobs/"):
            if initiated is None or initiated < cutoff:
                await self.client.abort_multipart(key, upload_id)

    async def ready(self) -> bool:
        """True when the bucket answers; raises S3Error when it cannot be reached (for /readyz,
        where a check that raises failed, with the reason logged by the client)."""
        await self.client.bucket_reachable()
        return True

    async def close(self) -> None:
        await self.client.close()

    async def begin(self, digest: str, expected_size: int | None = None) -> S3Upload:
        key = self.key(digest)
        spool = await LocalSpool.create(self.spool_dir, digest)
        return S3Upload(self.client, key, spool, part_size_for(expected_size, self.part_size), self.inflight)

    async def spool(self, digest: str) -> LocalSpool:
        self.key(digest)  # a well-formed digest, as for `begin`
        return await LocalSpool.create(self.spool_dir, digest)

    async def put(self, digest: str, data: bytes) -> None:
        await self.client.put(self.key(digest), data)

    async def size(self, digest: str) -> int | None:
        return await self.client.head(self.key(digest))

    async def open(self, digest: str) -> S3Opened | None:
        key = self.key(digest)
        size = await self.client.head(key)
        return None if size is None else S3Opened(self.client, key, size, self.policy)

    async def delete(self, digest: str) -> None:
        await self.client.delete(self.key(digest))

    async def listing(self) -> AsyncIterator[StoredObject]:
        async for key, size, modified in self.client.list_objects(self.prefix + "blobs/"):
            digest = digest_of_key(self.prefix, key)
            if digest is not None:
                yield StoredObject(digest, size, modified)

    def local_path(self, digest: str) -> Path | None:
        return None

    async def presigned_url(self, digest: str, seconds: int = PRESIGN_SECONDS) -> str | None:
        return self.client.presign_get(self.key(digest), seconds)


def normalize_prefix(prefix: str) -> str:
    """ "" or "a/b/" (one trailing slash, none leading)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _fresh_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.part"):  # a crash's spool files: never published
        if writer_alive(leftover.name):
            continue  # another worker of `serve --workers N` is filling it right now
        with contextlib.suppress(OSError):
            leftover.unlink()
