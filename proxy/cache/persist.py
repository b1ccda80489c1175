"""The index written behind the cache, in batches, so no request waits on the store.

Changes (new entries, bindings, tags, evictions) are queued as statements and written
each second in one transaction; last-use times, which every hit changes, are written
every `touch_seconds` (the order of eviction after a restart is approximate by that much,
which LRU tolerates). A failed write is logged and dropped: the files on disk are the
truth, and a start rebuilds what the store lost (proxy.cache.service.Cache.start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from proxy.store import cacheindex
from proxy.store.base import Store
from proxy.store.cacheindex import Statement

log = logging.getLogger("pullgate.cache")

MAX_PENDING = 100_000


class Persistence:
    def __init__(
        self,
        store: Store,
        touched: Callable[[], dict[str, float]],
        flush_seconds: float = 1.0,
        touch_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self._touched = touched
        self.flush_seconds = flush_seconds
        self.touch_seconds = touch_seconds
        self.pending: list[Statement] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    def queue(self, *statements: Statement) -> None:
        if len(self.pending) >= MAX_PENDING:  # the store is down for long: the disk stays the truth
            self.dropped += len(statements)
            return
        self.pending.extend(statements)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cache-index-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush(touches=True)

    async def flush(self, touches: bool = False) -> None:
        batch, self.pending = self.pending, []
        if touches:
            batch += [cacheindex.touch(d, t) for d, t in self._touched().items()]
        if not batch:
            return
        try:
            await cacheindex.run(self.store, batch)
        except Exception as exc:
            log.error("cache index write failed (%s); %d change(s) dropped", type(exc).__name__, len(batch))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_touch = loop.time() + self.touch_seconds
        while True:
            await asyncio.sleep(self.flush_seconds)
            touches = loop.time() >= next_touch
            if touches:
                next_touch = loop.time() + self.touch_seconds
            await self.flush(touches)
