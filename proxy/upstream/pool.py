"""Per-registry share of the upstream connection pool (`upstream.pool_per_registry`).

One registry's slow streams must not hold every upstream connection: each
registry may hold at most `per_registry` at once, from the request until its
response is released or closed. A request that cannot get one within `wait`
seconds is refused (503) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy import metrics


class PoolExhausted(Exception):
    pass


class RegistrySlots:
    def __init__(self, per_registry: int, wait: float) -> None:
        self.per_registry = per_registry
        self.wait = wait
        # Only registries with a holder or a waiter have an entry: the table stays
        # as small as the number of registries in use.
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    async def acquire(self, key: str, slug: str) -> Callable[[], None]:
        """Wait for a slot; returns its release function (safe to call twice)."""
        sem = self._sems.get(key)
        if sem is None:
            sem = self._sems[key] = asyncio.Semaphore(self.per_registry)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            if sem.locked():
                async with asyncio.timeout(self.wait):
                    await sem.acquire()
            else:  # a free slot is taken at once: no timer to arm and cancel (the usual case)
                await sem.acquire()
        except TimeoutError:
            self._leave(key)
            metrics.UPSTREAM_POOL_REFUSED.labels(slug).inc()
            raise PoolExhausted(slug) from None
        except BaseException:
            self._leave(key)
            raise
        metrics.child(metrics.UPSTREAM_POOL_IN_USE, slug).inc()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            sem.release()
            metrics.child(metrics.UPSTREAM_POOL_IN_USE, slug).dec()
            self._leave(key)

        return release

    def _leave(self, key: str) -> None:
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key]
            del self._sems[key]
