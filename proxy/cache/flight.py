"""Single flight: one upstream fetch per digest, however many clients want it.

The fetch runs as its own task, not in any client's request: it writes the body to the
backend's temporary file, hashing as it goes; every client (the first one too) is a
reader that tails that file. A reader never gets the last byte before the digest matched
(with a known length it holds the last byte back; without one, the end of the chunked
body), so a mismatch cuts every reader with an incomplete body, and nothing is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from proxy.cache.backend import Backend, Upload
from proxy.cache.index import Binding
from proxy.cache.offload import off_loop
from proxy.oci.digest import Verifier

log = logging.getLogger("pullgate.cache")

# Bytes received but not yet hashed and written, per fetch (and as much again in the threads).
BACKLOG = 8 * 1024 * 1024


@dataclass
class Source:
    """The upstream's answer to a GET, status checked: its length, type and body."""

    length: int | None
    media_type: str | None
    chunks: AsyncIterator[bytes]


Opener = Callable[[], AbstractAsyncContextManager[Source]]
# Whether this process fills a digest for the cluster (proxy.cache.lease), held while it does.
Claim = Callable[[str], AbstractAsyncContextManager[bool]]


@contextlib.asynccontextmanager
async def unclaimed(digest: str) -> AsyncIterator[bool]:
    """No lease to take (a cache nobody shares): this process fills."""
    yield True


class FetchFailed(Exception):
    """The fetch broke after its first byte. `reason`: upstream | digest."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cache fetch failed ({reason})")
        self.reason = reason


class Flight:
    def __init__(self, digest: str, origin: Binding) -> None:
        self.digest = digest
        self.bindings: set[Binding] = {origin}  # repositories the upstream confirmed it for
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.length: int | None = None
        self.media_type: str | None = None
        self.written = 0
        self.verified = False  # every byte is there and hashes to the digest
        self.kept = False  # and it was published under its digest
        self.failed: FetchFailed | None = None
        self.keeping = True  # False: another process fills it for the cluster; passed through only
        self.finished = False
        self.readers = 0
        self.fd: int | None = None  # a read descriptor on the growing file, shared by the readers
        self._progress: asyncio.Future[None] = self.started.get_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.unregister: Callable[[], None] = lambda: None

    # --- readers ----------------------------------------------------------------
    def join(self) -> None:
        """Counted at once, so the descriptor outlives every reader that joined."""
        self.readers += 1

    def leave(self) -> None:
        self.readers -= 1
        self._maybe_close()

    def readable(self) -> int:
        """How far a reader may send: never the whole body before it is verified."""
        if self.verified:
            return self.written
        if self.length is not None:
            return min(self.written, self.length - 1)
        return self.written

    @property
    def complete(self) -> bool:
        return self.verified and self.finished

    async def progress(self) -> None:
        """Until more was written, or the fetch ended (either way)."""
        if self.finished:
            return
        await asyncio.shield(self._progress)

    def _notify(self) -> None:
        fut, self._progress = self._progress, self.started.get_loop().create_future()
        fut.set_result(None)

    def _maybe_close(self) -> None:
        if self.finished and self.readers <= 0 and self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    # --- the fetch ----------------------------------------------------------------
    async def run(
        self, backend: Backend, opener: Opener, done: Callable[[Flight], None], claim: Claim = unclaimed
    ) -> None:
        """Fetch, verify, publish; then `done` (see `kept` and `failed`). Inside `claim`: when it
        says another process fills this digest for the cluster, the bytes only pass through
        (a local spool the readers tail), verified all the same, and nothing is published."""
        async with claim(self.digest) as keep:
            self.keeping = keep
            await self._run(backend, opener, done)

    async def _run(self, backend: Backend, opener: Opener, done: Callable[[Flight], None]) -> None:
        upload: Upload | None = None
        try:
            async with opener() as source:
                upload = await (backend.begin(self.digest) if self.keeping else backend.spool(self.digest))
                self.fd = await off_loop(os.open, upload.path, os.O_RDONLY | os.O_CLOEXEC)
                self.length, self.media_type = source.length, source.media_type
                self.started.set_result(None)
                await self._copy(source, upload)
            self.verified = True
            self._notify()  # the held-back end may go out now
            try:
                if self.keeping:
                    await upload.publish()
                    self.kept = True
            except OSError as exc:  # disk full, say: the readers have their bytes; nothing is kept
                log.error("cache: could not publish %s: %s", self.digest, exc.strerror)
        except FetchFailed as exc:
            self.failed = exc
        except BaseException as exc:
            if not self.started.done():
                self.started.set_exception(exc)  # before any byte: the readers answer with it
                self.started.exception()  # retrieved: a flight nobody joined must not warn
            else:
                log.warning("cache fetch of %s failed: %s", self.digest, type(exc).__name__)
                self.failed = FetchFailed("upstream")
            if not isinstance(exc, Exception):
                raise
        finally:
            self.unregister()  # at once: no new reader joins a flight that has ended
            if upload is not None and not self.kept:
                with contextlib.suppress(OSError):
                    await upload.discard()
            # Readers learn of a failure only now, when nothing of it is left on disk.
            self.finished = True
            try:
                done(self)
            finally:
                self._notify()
                self._maybe_close()

    async def _copy(self, source: Source, upload: Upload) -> None:
        """Receive on the loop; hash and write in a task of its own, up to BACKLOG bytes behind,
        so a thread that waits for a CPU does not stall the upstream socket."""
        verifier = Verifier(self.digest)
        backlog = Backlog(BACKLOG)
        writer = asyncio.ensure_future(self._drain(backlog, verifier, upload))
        received = 0
        try:
            async for chunk in source.chunks:
                received += len(chunk)
                if self.length is not None and received > self.length:
                    raise FetchFailed("upstream")  # more than announced
                await backlog.put(chunk)
            backlog.close()
            await writer
        except FetchFailed:
            raise
        except Exception as exc:
            log.warning("cache fetch of %s broke after %d bytes: %s", self.digest, self.written, type(exc).__name__)
            raise FetchFailed("upstream") from None
        finally:
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer  # the write in its thread ends before the file is discarded
        if self.length is not None and self.written != self.length:
            raise FetchFailed("upstream")
        if not verifier.matches():
            raise FetchFailed("digest")

    async def _drain(self, backlog: Backlog, verifier: Verifier, upload: Upload) -> None:
        failure: Exception | None = None
        while (chunks := await backlog.take()) is not None:
            if failure is not None:
                continue  # keep taking, so the receiver never waits on a full backlog
            try:
                # Everything received meanwhile, in one trip off the loop: hashed, then written
                # by the same thread (both release the GIL), the buffers never joined. Measured:
                # less CPU than hashing and writing in two threads at once.
                await upload.write_many(chunks, verifier.update)
            except Exception as exc:  # the disk: raised once the receiver is done
                failure = exc
                continue
            self.written += sum(map(len, chunks))
            self._notify()
        if failure is not None:
            raise failure


class Backlog:
    """Chunks received, not yet hashed and written. The writer takes all of them at once, so
    the number of trips to the threads follows the disk's pace, not the socket's read size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.closed = False
        self._chunks: list[bytes] = []
        self._filled = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, chunk: bytes) -> None:
        while self.size >= self.limit:
            self._room.clear()
            await self._room.wait()
        self._chunks.append(chunk)
        self.size += len(chunk)
        self._filled.set()

    def close(self) -> None:
        self.closed = True
        self._filled.set()

    async def take(self) -> list[bytes] | None:
        """Every chunk waiting; None once closed and empty."""
        while not self._chunks:
            if self.closed:
                return None
            self._filled.clear()
            await self._filled.wait()
        chunks, self._chunks, self.size = self._chunks, [], 0
        self._room.set()
        return chunks


class Flights:
    """The fetches in progress, by digest."""

    def __init__(self) -> None:
        self.running: dict[str, Flight] = {}

    def get(self, digest: str) -> Flight | None:
        return self.running.get(digest)

    def start(
        self,
        digest: str,
        origin: Binding,
        backend: Backend,
        opener: Opener,
        done: Callable[[Flight], None],
        claim: Claim = unclaimed,
    ) -> Flight:
        assert digest not in self.running, "one flight per digest"
        flight = Flight(digest, origin)
        self.running[digest] = flight

        def unregister() -> None:
            self.running.pop(digest, None)

        flight.unregister = unregister
        flight.task = asyncio.create_task(flight.run(backend, opener, done, claim), name=f"cache-fetch-{digest[:19]}")
        return flight
