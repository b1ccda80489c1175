"""The short-lived read-through cache over the store that the hot path reads.

A pull looks up its license, app and registries on every request; these
caches keep that off the database while bounding staleness to a few seconds,
so a revocation or a new registry takes effect quickly.
"""

from __future__ import annotations

from proxy.store.base import Store, license_hash
from proxy.store.models import App, Customer, Registry
from proxy.ttlcache import TTLCache


class StoreReadCache:
    """The store's reads a pull makes, each cached for `ttl` seconds (invalidate() drops them all)."""

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
