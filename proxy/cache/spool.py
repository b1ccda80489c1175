"""A local spool file: the Upload of a fetch that only passes through (another process
fills the digest for the cluster, proxy.cache.lease), and the local file an S3 upload
writes beside its parts. Readers tail it like any upload's file; it is never published,
and `discard` removes it.

Named `<digest>.<pid>.<hex>.part` like the filesystem backend's temporaries, so a process
starting beside running ones removes only the spools of processes that are gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from proxy.cache.fileio import write_all
from proxy.cache.offload import off_loop


class LocalSpool:
    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd: int | None = fd

    @classmethod
    async def create(cls, directory: Path, digest: str) -> LocalSpool:
        path = directory / f"{digest.replace(':', '-')}.{os.getpid()}.{secrets.token_hex(6)}.part"
        fd = await off_loop(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return cls(path, fd)

    @property
    def path(self) -> Path:
        return self._path

    async def write(self, chunk: bytes) -> None:
        await self.write_many((chunk,))

    async def write_many(self, chunks: Sequence[bytes], each: Callable[[bytes], None] | None = None) -> None:
        assert self._fd is not None, "write after discard"
        await off_loop(write_all, self._fd, chunks, each)

    async def publish(self) -> None:
        raise RuntimeError("a spool is never published")

    async def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            await off_loop(_close_unlink, fd, self._path)


def writer_alive(name: str) -> bool:
    """Whether the process named in a temporary's name (`<digest>.<pid>.<hex>.part`) still runs."""
    parts = name.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return False  # an older or foreign name: nobody can be writing it
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # this process is starting: nothing of its own is in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _close_unlink(fd: int, path: Path) -> None:
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
