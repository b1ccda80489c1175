"""What a cache backend offers: digest-addressed content, written verified, read by range.

The filesystem backend (`fs`) is the embedded default; an S3 backend implements the same
protocols (its upload spools to a local file that readers tail, and publishes to the
bucket once verified).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy.cache.s3relay import DirectSource


@dataclass(frozen=True)
class StoredObject:
    digest: str
    size: int
    mtime: float  # seconds since the epoch: the last use when the index is rebuilt from a listing


class Upload(Protocol):
    """One object being written. Nothing is visible under its digest until `publish`."""

    @property
    def path(self) -> Path:
        """A local file holding the bytes written so far: followers read it while it grows."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Append (blocking I/O happens off the event loop)."""
        ...

    async def write_many(self, chunks: Sequence[bytes], each: Callable[[bytes], None] | None = None) -> None:
        """Append several chunks in order, in one trip off the event loop, none joined first;
        `each` (a hash's update) sees every chunk in that same trip, before it is written."""
        ...

    async def publish(self) -> None:
        """Make the complete, verified object visible under its digest, atomically
        (the filesystem: fsync, then rename)."""
        ...

    async def discard(self) -> None:
        """Drop what was written; safe to call more than once, and after `publish` (no-op)."""
        ...


class Opened(Protocol):
    """An object opened for reading; it stays readable while open, even if deleted meanwhile."""

    @property
    def size(self) -> int: ...

    def fileno(self) -> int | None:
        """A local file descriptor for sendfile/pread, or None (remote backends)."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`."""
        ...

    def chunks(self, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """The bytes [offset, offset + length) in pieces as they arrive, never gathered into
        one buffer (a hit streamed from a remote backend: each piece goes straight out)."""
        ...

    def direct_source(self) -> DirectSource | None:
        """Where a thread may GET the object itself (proxy.cache.s3relay: a large S3 hit),
        or None (a local file, or a backend without one)."""
        ...

    async def close(self) -> None: ...


class Backend(Protocol):
    async def start(self) -> None:
        """Ready the storage; remove temporary objects a crash left behind."""
        ...

    async def begin(self, digest: str) -> Upload: ...

    async def spool(self, digest: str) -> Upload:
        """A local file for bytes that only pass through (another process fills the digest
        for the cluster): tailed like an upload's, never published."""
        ...

    async def open(self, digest: str) -> Opened | None:
        """None when the object is not there."""
        ...

    async def put(self, digest: str, data: bytes) -> None:
        """A small object (a manifest) at once, published atomically."""
        ...

    async def size(self, digest: str) -> int | None: ...

    async def delete(self, digest: str) -> None:
        """Remove; readers that have it open keep reading (POSIX unlink, S3 in-flight GETs)."""
        ...

    def listing(self) -> AsyncIterator[StoredObject]:
        """Every published object, to rebuild the index."""
        ...

    def local_path(self, digest: str) -> Path | None:
        """Where the object lives on local disk, when it does."""
        ...

    async def presigned_url(self, digest: str, seconds: int) -> str | None:
        """A URL a client may GET the object from directly (S3 redirects), or None."""
        ...

    async def ready(self) -> bool:
        """Whether objects can be read and written now (`/readyz`)."""
        ...

    async def close(self) -> None:
        """Release connections (S3); the filesystem holds none."""
        ...
