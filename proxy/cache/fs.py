"""The filesystem backend: `<path>/blobs/<algorithm>/<2 hex>/<hex>`, temporaries in `<path>/tmp`.

An object is written under a temporary name, fsynced, then renamed into place, so a
digest's file is always complete and verified. Temporaries are in the same file system
(rename is atomic) and removed at start: a crash leaves nothing a later start would serve.
Every blocking call runs on the cache's own small thread pool, never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path

from proxy.cache.backend import StoredObject
from proxy.cache.fileio import write_all
from proxy.cache.offload import off_loop
from proxy.cache.spool import LocalSpool, writer_alive
from proxy.oci.grammar import KNOWN_DIGESTS

CHUNK_READ = 4 * 1024 * 1024  # chunks(): large preads off the loop (hits themselves use sendfile)


class FsUpload:
    def __init__(self, final: Path, temp: Path, fd: int) -> None:
        self.final, self._path, self._fd = final, temp, fd
        self._closed = False
        self.published = False

    @property
    def path(self) -> Path:
        return self._path

    async def write(self, chunk: bytes) -> None:
        await off_loop(write_all, self._fd, (chunk,))

    async def write_many(self, chunks: Sequence[bytes], each: Callable[[bytes], None] | None = None) -> None:
        await off_loop(write_all, self._fd, chunks, each)

    async def publish(self) -> None:
        await off_loop(self._publish)
        self.published = True

    def _publish(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._closed = True
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self._path, self.final)
        # The rename itself is durable once the directory is synced.
        dfd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def discard(self) -> None:
        if self.published:
            return
        await off_loop(self._discard)

    def _discard(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


class FsOpened:
    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int | None:
        return self._fd

    def direct_source(self) -> None:
        return None  # sendfile from the descriptor

    async def read(self, offset: int, length: int) -> bytes:
        assert self._fd is not None, "read after close"
        return await off_loop(os.pread, self._fd, length, offset)

    async def chunks(self, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        end = offset + min(length, max(0, self._size - offset))
        while offset < end:
            piece = await self.read(offset, min(CHUNK_READ, end - offset))
            if not piece:
                return
            offset += len(piece)
            yield piece

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class FilesystemBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"

    async def start(self) -> None:
        await off_loop(self._start)

    def _start(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():  # a crash's half-written objects: never published
            if writer_alive(leftover.name):
                continue  # another worker of `serve --workers N` is filling it right now
            with contextlib.suppress(OSError):
                leftover.unlink()

    async def close(self) -> None:
        return None

    async def ready(self) -> bool:
        def usable() -> bool:  # a lost or read-only volume fails readiness instead of every miss
            return self.blobs.is_dir() and os.access(self.tmp, os.W_OK | os.X_OK)

        return await off_loop(usable)

    def local_path(self, digest: str) -> Path | None:
        algorithm, _, hexpart = digest.partition(":")
        if algorithm not in KNOWN_DIGESTS or len(hexpart) != KNOWN_DIGESTS[algorithm] or not _is_hex(hexpart):
            return None  # never a path built from anything but a well-formed digest
        return self.blobs / algorithm / hexpart[:2] / hexpart

    def _final(self, digest: str) -> Path:
        path = self.local_path(digest)
        if path is None:
            raise ValueError("not a digest")
        return path

    async def begin(self, digest: str) -> FsUpload:
        final = self._final(digest)
        # The writer's pid in the name: a worker (re)starting beside others removes only the
        # temporaries of processes that are gone.
        temp = self.tmp / f"{digest.replace(':', '-')}.{os.getpid()}.{secrets.token_hex(6)}.part"
        fd = await off_loop(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return FsUpload(final, temp, fd)

    async def spool(self, digest: str) -> LocalSpool:
        self._final(digest)  # a well-formed digest, as for `begin`
        return await LocalSpool.create(self.tmp, digest)

    async def put(self, digest: str, data: bytes) -> None:
        upload = await self.begin(digest)
        try:
            await upload.write(data)
            await upload.publish()
        finally:
            await upload.discard()

    async def open(self, digest: str) -> FsOpened | None:
        path = self.local_path(digest)
        if path is None:
            return None
        return await off_loop(_open_for_read, path)

    async def size(self, digest: str) -> int | None:
        path = self.local_path(digest)
        if path is None:
            return None
        try:
            return (await off_loop(os.stat, path)).st_size
        except FileNotFoundError:
            return None

    async def delete(self, digest: str) -> None:
        path = self.local_path(digest)
        if path is not None:
            await off_loop(_unlink, path)

    async def listing(self) -> AsyncIterator[StoredObject]:
        for obj in await off_loop(self._list):
            yield obj

    def _list(self) -> list[StoredObject]:
        found = []
        for algorithm in KNOWN_DIGESTS:
            base = self.blobs / algorithm
            if not base.is_dir():
                continue
            for sub in base.iterdir():
                for f in sub.iterdir() if sub.is_dir() else ():
                    digest = f"{algorithm}:{f.name}"
                    if self.local_path(digest) != f:
                        continue  # not ours
                    with contextlib.suppress(FileNotFoundError):
                        st = f.stat()
                        found.append(StoredObject(digest, st.st_size, st.st_mtime))
        return found

    async def presigned_url(self, digest: str, seconds: int) -> str | None:
        return None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _open_for_read(path: Path) -> FsOpened | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return FsOpened(fd, os.fstat(fd).st_size)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
