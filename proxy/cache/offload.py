"""The cache's own small thread pool: file I/O and hashing never run on the event loop,
and never queue behind the store's calls in the default executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pullgate-cache-io")
# Blocking sendfiles of hits (proxy.cache.send): each holds a thread while its client reads.
_SEND_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pullgate-cache-send")


async def off_loop(fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


async def off_loop_send(fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(_SEND_POOL, fn, *args)
