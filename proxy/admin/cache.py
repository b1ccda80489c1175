"""The pull-through cache through the vendor API, scoped to the team's own registries:
`GET /vendor/v3/cache` (stats), `GET /vendor/v3/cache/entries`, `DELETE /vendor/v3/cache/entries`,
filtered by `registry` (slug or endpoint), `repo` and `digest`.

A team sees and purges only the bindings of its registries; an object another team's
registry also holds stays on disk (proxy.cache.service.Cache.purge).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.admin.api import TEAM, json_answer
from proxy.admin.service import VendorService
from proxy.apierrors import Invalid
from proxy.cache.service import Cache
from proxy.oci.grammar import KNOWN_DIGESTS
from proxy.store.models import Team

FILTERS = {"registry", "repo", "digest"}


class CacheService:
    def __init__(self, vendor: VendorService, cache: Cache | None) -> None:
        self.vendor = vendor
        self.cache = cache

    async def _scope(self, team: Team, query: Mapping[str, str]) -> tuple[dict[str, str], str | None, str | None]:
        """(registry id -> slug of the team's registries, narrowed by `registry`), repo, digest."""
        problems = [f"{k}: unknown query parameter" for k in sorted(set(query) - FILTERS)]
        digest = query.get("digest") or None
        if digest is not None:
            algorithm, _, hexpart = digest.partition(":")
            if KNOWN_DIGESTS.get(algorithm) != len(hexpart) or any(c not in "0123456789abcdef" for c in hexpart):
                problems.append("digest: not a digest (sha256:<64 hex>)")
        if problems:
            raise Invalid(problems)
        if query.get("registry"):
            reg = await self.vendor.registry(team, query["registry"])  # NotFound for another team's
            registries = {reg.id: reg.slug}
        else:
            registries = {r.id: r.slug for r in await self.vendor.store.registries_of_team(team.id)}
        return registries, query.get("repo") or None, digest

    async def stats(self, team: Team) -> dict[str, Any]:
        if self.cache is None:
            return {"enabled": False}
        registries, _, _ = await self._scope(team, {})
        return {"enabled": True, **self.cache.stats(set(registries))}

    async def entries(self, team: Team, query: Mapping[str, str]) -> list[dict[str, Any]]:
        if self.cache is None:
            return []
        registries, repo, digest = await self._scope(team, query)
        return [
            {
                "registry": registries[binding[0]],
                "repository": binding[1],
                "digest": d,
                "size": entry.size,
                "mediaType": entry.media_type,
                "lastAccess": dt.datetime.fromtimestamp(entry.last_access, dt.UTC).isoformat(timespec="seconds"),
            }
            for d, binding, entry in self.cache.entries(set(registries), repo, digest)
        ]

    async def purge(self, team: Team, query: Mapping[str, str]) -> dict[str, int]:
        if self.cache is None:
            return {"bindings": 0, "deleted": 0, "tags": 0}
        registries, repo, digest = await self._scope(team, query)
        purged = await self.cache.purge(set(registries), repo, digest)
        return {"bindings": purged.bindings, "deleted": purged.deleted, "tags": purged.tags}


def install(app: web.Application, service: CacheService) -> None:
    async def stats(request: web.Request) -> web.Response:
        return json_answer({"cache": await service.stats(request[TEAM])})

    async def entries(request: web.Request) -> web.Response:
        return json_answer({"entries": await service.entries(request[TEAM], request.query)})

    async def purge(request: web.Request) -> web.Response:
        return json_answer({"purged": await service.purge(request[TEAM], request.query)})

    r = app.router
    r.add_get("/cache", stats)
    r.add_get("/cache/entries", entries)
    r.add_delete("/cache/entries", purge)
