"""A TTL cache with least-recently-used eviction, for lookups keyed by client input."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 100_000


class TTLCache(Generic[K, V]):
    """Entries live `ttl` seconds; past `max_entries` the least recently used goes.

    Keys can come from clients (every guessed license is a miss cached as None),
    so the table is bounded, and evicting one entry at a time keeps a flood of
    guesses from flushing the entries real customers are using."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        now = self._clock()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            self._data.move_to_end(key)
            return hit[1]
        value = await load()
        if self.ttl > 0:
            self._data[key] = (now + self.ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        self._data.clear()
