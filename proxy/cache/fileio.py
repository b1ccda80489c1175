"""Blocking file writes shared by the backends (run them off the event loop)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence

# Linux's IOV_MAX: at most this many buffers per writev.
_IOV_MAX = 1024


def write_all(fd: int, chunks: Sequence[bytes], each: Callable[[bytes], None] | None = None) -> None:
    """Append every chunk, in order, with as few system calls as the kernel allows
    (writev: the received buffers go to the file as they are, never joined first).
    `each` (a hash's update) sees every chunk first, in this same thread."""
    if each is not None:
        for chunk in chunks:
            each(chunk)
    views = [memoryview(c) for c in chunks if c]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        if n == 0:
            raise OSError(errno.EIO, "the file took none of the bytes")  # never loop forever
        while n:  # drop what was written; a short write leaves part of one buffer
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0
