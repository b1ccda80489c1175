"""Process tuning for streaming throughput.

Every relayed chunk is a fresh ~256 KiB bytes object. With glibc's defaults
such a block is mmap'd or trimmed back to the OS as soon as it is freed, so
the next chunk page-faults fresh zeroed pages: half the proxy's system time
on a 1 GiB pull (bench/pull_bench.py). Raising the mmap and trim thresholds
lets freed chunks be reused from the heap. Memory stays bounded: only the
chunks in flight are live; at most the trim threshold of free heap is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("pullgate.tuning")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 8 << 20, trim_threshold: int = 32 << 20) -> bool:
    """True when glibc took the settings; a no-op elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    log.debug("malloc thresholds %s", "set" if ok else "refused")
    return ok
