"""Short-lived read caches over the store for the hot path.

A pull looks up its license, app and registries on every request; these
caches keep that off the database while bounding staleness to a few seconds,
so a revocation or a new registry takes effect quickly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from proxy.store.base import Store, license_hash
from proxy.store.models import App, Customer, Registry

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


class Directory:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self._licenses: TTLCache[str, Customer | None] = TTLCache(ttl)
        self._customers: TTLCache[str, Customer | None] = TTLCache(ttl)
        self._apps: TTLCache[str, App | None] = TTLCache(ttl)
        self._registries: TTLCache[str, list[Registry]] = TTLCache(ttl)
        self._anonymous: TTLCache[str, list[Registry]] = TTLCache(ttl)
        self._team_apps: TTLCache[str, list[App]] = TTLCache(ttl)
        self._pulled: TTLCache[str, list[tuple[str, str]]] = TTLCache(ttl)

    async def customer_by_license(self, license_id: str) -> Customer | None:
        return await self._licenses.get(license_hash(license_id), lambda: self.store.customer_by_license(license_id))

    async def customer_by_id(self, customer_id: str) -> Customer | None:
        return await self._customers.get(customer_id, lambda: self.store.customer_by_id(customer_id))

    async def app(self, slug: str) -> App | None:
        return await self._apps.get(slug, lambda: self.store.app_by_slug(slug))

    async def registries_for(self, app: App) -> list[Registry]:
        return await self._registries.get(app.id, lambda: self.store.registries_for_app(app))

    async def anonymous_registries(self, team_id: str | None) -> list[Registry]:
        every = await self._anonymous.get("*", self.store.anonymous_registries)
        return [r for r in every if team_id is None or r.team_id == team_id]

    async def team_apps(self, team_id: str) -> list[App]:
        return await self._team_apps.get(team_id, lambda: self.store.apps_of_team(team_id))

    async def pulled(self, app: App) -> list[tuple[str, str]]:
        return await self._pulled.get(app.id, lambda: self.store.pulled_repositories(app.team_id, app.slug))

    def invalidate(self) -> None:
        for cache in (self._licenses, self._customers, self._apps, self._registries, self._anonymous, self._team_apps):
            cache.clear()
