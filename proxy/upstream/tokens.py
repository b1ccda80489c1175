"""Upstream token cache: per (registry, scope), refreshed once for all waiters.

A token is used until shortly before it expires. When many requests need the
same missing token at once, one fetch runs and the rest await its result.
After an upstream 401 the caller passes the token that failed as `stale`, so
a token somebody already refreshed is not fetched a second time.

The scope comes from the repository names clients ask for, so the table is
bounded: past `max_entries` the least recently used token is dropped (a miss
costs one token fetch, never a wrong answer).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedToken:
    header: str  # the Authorization header value to send, e.g. "Bearer abc"
    expires_at: float  # monotonic seconds

    def fresh(self, now: float) -> bool:
        return now < self.expires_at


def usable_until(issued: float, lifetime: float) -> float:
    """Stop using a token a little before the registry stops accepting it."""
    margin = min(60.0, max(lifetime * 0.2, 1.0))
    return issued + max(lifetime - margin, 1.0)


MAX_ENTRIES = 10_000


class TokenCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self._tokens: OrderedDict[tuple[str, str], CachedToken] = OrderedDict()
        self.max_entries = max_entries
        self._inflight: dict[tuple[str, str], asyncio.Future[CachedToken]] = {}
        self._clock = clock
        self.fetches = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def peek(self, key: tuple[str, str]) -> CachedToken | None:
        tok = self._tokens.get(key)
        if tok is None:
            return None
        if not tok.fresh(self._clock()):
            del self._tokens[key]  # expired tokens do not linger
            return None
        self._tokens.move_to_end(key)
        return tok

    async def get(
        self,
        key: tuple[str, str],
        fetch: Callable[[], Awaitable[CachedToken]],
        stale: str | None = None,
    ) -> CachedToken:
        tok = self.peek(key)
        if tok is not None and tok.header != stale:
            self.hits += 1
            return tok
        pending = self._inflight.get(key)
        if pending is None:
            # The fetch runs as its own task: a waiter that is cancelled (its
            # client left) must not cancel the fetch the others are waiting on.
            self.fetches += 1
            pending = asyncio.ensure_future(self._fetch(key, fetch))
            self._inflight[key] = pending
        return await asyncio.shield(pending)

    async def _fetch(self, key: tuple[str, str], fetch: Callable[[], Awaitable[CachedToken]]) -> CachedToken:
        try:
            tok = await fetch()
            self._tokens[key] = tok
            self._tokens.move_to_end(key)
            while len(self._tokens) > self.max_entries:
                self._tokens.popitem(last=False)
            return tok
        finally:
            del self._inflight[key]

    def forget_registry(self, registry_id: str) -> None:
        for key in [k for k in self._tokens if k[0] == registry_id]:
            del self._tokens[key]
