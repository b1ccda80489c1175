"""`Cache`: the backend, the index, the fetches in flight, eviction and the store behind it.

The one object the pull facade (proxy.pull.cached) and the vendor API talk to. It knows
nothing of licenses (checked before it is asked) nor of registries' protocols (the facade
hands it the upstream's answer as a `Source`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from proxy.cache import metrics
from proxy.cache.backend import Backend, Opened
from proxy.cache.flight import Flight, Flights, Opener
from proxy.cache.index import Binding, CacheIndex, Entry, TagEntry, TagKey
from proxy.cache.lease import FillLeases
from proxy.cache.persist import Persistence
from proxy.store import cacheindex
from proxy.store.base import Row, Store

log = logging.getLogger("pullgate.cache")

# Every process sharing the store and the backend (replicas on a bucket, workers on a disk)
# keeps its own index within max_size; together they can hold more. Every SHARED_EVICT_EVERY
# seconds one of them (the holder of this lease row) brings the store's total back within it.
SHARED_EVICT_EVERY = 30.0
CHANGED = "cache"  # Store.notify kind: a purge changed the shared index
SHARED_EVICT_LEASE = "evict:shared"
SHARED_EVICT_ROWS = 10_000  # candidates read per round; a larger excess takes more rounds


@dataclass(frozen=True)
class Purged:
    bindings: int  # bindings removed
    deleted: int  # objects deleted (no binding of anyone left)
    tags: int  # tags forgotten


class Cache:
    def __init__(
        self,
        backend: Backend,
        store: Store,
        max_size: int,
        tag_ttl: float,
        serve_stale: bool,
        hit_io: str = "sendfile",
        clock: Callable[[], float] = time.time,
        shared_evict_every: float = SHARED_EVICT_EVERY,
        shared_eviction: bool = True,
    ) -> None:
        self.backend = backend
        self.store = store
        self.index = CacheIndex(max_size)
        self.flights = Flights()
        self.tag_ttl = tag_ttl
        self.serve_stale = serve_stale
        self.hit_io = hit_io
        self.clock = clock
        self.persist = Persistence(store, self.index.take_touched)
        self.leases = FillLeases(store, clock=clock)
        self.hits = 0
        self.misses = 0
        self.shared_evict_every = shared_evict_every
        self.shared_eviction = shared_eviction  # every process sharing the store shares the backend
        self._tasks: set[asyncio.Future[None]] = set()
        self._shared_evictor: asyncio.Task[None] | None = None

    # --- life -----------------------------------------------------------------------
    async def start(self) -> None:
        """Temporaries removed; the index loaded from the store and checked against what is
        on disk: an entry whose file is gone is forgotten, a file the store does not know
        is taken in (with no binding: served to a repository only once the upstream confirms)."""
        await self.backend.start()
        rows, bindings, tags = await cacheindex.load(self.store)
        on_disk = {obj.digest: obj async for obj in self.backend.listing()}
        gone = []
        for row in rows:
            obj = on_disk.pop(row["digest"], None)
            if obj is None:
                gone.append(row["digest"])
                continue
            self.index.add(Entry(row["digest"], obj.size, row["media_type"], row["last_access"] / 1000))
        for obj in sorted(on_disk.values(), key=lambda o: o.mtime):
            self.index.add(Entry(obj.digest, obj.size, None, obj.mtime))
            self.persist.queue(cacheindex.put_entry(obj.digest, obj.size, None, obj.mtime))
        for b in bindings:
            if b["digest"] in self.index.entries:
                self.index.bind(b["digest"], (b["registry_id"], b["repository"]))
        for t in tags:
            key = (t["registry_id"], t["repository"], t["tag"], t["accept"])
            self.index.set_tag(key, TagEntry(t["digest"], t["media_type"], t["checked_at"] / 1000))
        for digest in gone:
            self.persist.queue(*cacheindex.forget(digest))
        if gone or on_disk:
            log.info("cache index: %d forgotten (file gone), %d taken in from disk", len(gone), len(on_disk))
        await self._evict()
        self._gauges()
        await self.persist.flush()
        self.persist.start()
        if self.shared_eviction:
            self._shared_evictor = asyncio.create_task(self._shared_evictions(), name="cache-shared-eviction")

    async def ready(self) -> bool:
        return await self.backend.ready()

    async def close(self) -> None:
        """Fetches still running are let finish (publish included), briefly; then the index is written."""
        tasks = [f.task for f in self.flights.running.values() if f.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._shared_evictor is not None:
            self._shared_evictor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._shared_evictor
        await self.persist.close()
        await self.backend.close()

    # --- lookups --------------------------------------------------------------------
    def held(self, digest: str) -> Entry | None:
        return self.index.get(digest)

    def bound(self, digest: str, binding: Binding) -> bool:
        return self.index.bound(digest, binding)

    def bind(self, digest: str, binding: Binding) -> None:
        if self.index.bind(digest, binding):
            self.persist.queue(cacheindex.bind(*binding, digest, self.clock()))

    # --- what other processes sharing the store and backend hold --------------------
    # Replicas on one bucket, workers on one disk: each keeps its own memory index, and
    # the store is where they meet. A miss of the memory index asks the store before it
    # goes upstream; what the store lists is taken in once the backend confirms it has it.
    async def adopt(self, digest: str) -> Entry | None:
        """The entry, from memory, or from the store when another process stored it."""
        entry = self.index.get(digest)
        if entry is not None:
            return entry
        shared = await self._stored_elsewhere(digest)
        if shared is None:
            return None
        row, bindings = shared
        entry = Entry(digest, row["size"], row["media_type"], self.clock())
        self.index.add(entry)
        for b in bindings:
            self.index.bind(digest, (b["registry_id"], b["repository"]))
        metrics.ADOPTED.inc()
        self._schedule(self._evict())
        self._gauges()
        return entry

    async def bound_anywhere(self, digest: str, binding: Binding) -> bool:
        """Bound here, or by another process (then remembered here)."""
        if self.index.bound(digest, binding):
            return True
        try:
            shared = await cacheindex.is_bound(self.store, *binding, digest)
        except Exception:
            return False  # the upstream is asked instead
        if shared:
            self.index.bind(digest, binding)
        return shared

    async def adopt_tag(self, key: TagKey) -> TagEntry | None:
        """The tag, from memory, or as another process last checked it."""
        tag = self.index.tag(key)
        if tag is not None:
            return tag
        try:
            row = await cacheindex.tag(self.store, key)
        except Exception:
            return None
        if row is None or await self.adopt(row["digest"]) is None:
            return None
        tag = TagEntry(row["digest"], row["media_type"], row["checked_at"] / 1000)
        self.index.set_tag(key, tag)
        return tag

    @contextlib.asynccontextmanager
    async def _claim(self, digest: str) -> AsyncIterator[bool]:
        """The flight's lease (proxy.cache.lease). The entry reaches the store before the
        lease is let go, so the next process to miss finds it instead of fetching again."""
        async with self.leases.claim(digest) as keep:
            if keep and await self._stored_elsewhere(digest) is not None:
                keep = False  # published by another just before the lease was ours: pass through
            metrics.FILLS.labels("fill" if keep else "pass").inc()
            yield keep
            await self.persist.flush()

    async def _stored_elsewhere(self, digest: str) -> tuple[Row, list[Row]] | None:
        """The store's entry and bindings of `digest`, when this process's backend holds the
        object too; None when it is not stored, not (yet, or any more) in the backend, or the
        store cannot be asked."""
        try:
            row, bindings = await cacheindex.entry(self.store, digest)
        except Exception as exc:
            log.warning("cache: the store could not be asked for %s (%s)", digest, type(exc).__name__)
            return None
        if row is None or await self.backend.size(digest) != row["size"]:
            return None
        return row, bindings

    async def open(self, digest: str) -> Opened | None:
        """The object, opened (it stays readable even if evicted meanwhile), its use noted."""
        opened = await self.backend.open(digest)
        if opened is None:
            self._forget(digest)
            return None
        self.index.touch(digest, self.clock())
        return opened

    async def redirect_url(self, digest: str, seconds: int) -> str | None:
        """A presigned URL for the object, once the backend has confirmed it still holds it
        (another replica may have evicted it: a client is never sent to a 404); its use noted."""
        if await self.backend.size(digest) is None:
            self._forget(digest)
            return None
        url = await self.backend.presigned_url(digest, seconds)
        if url is not None:
            self.index.touch(digest, self.clock())
        return url

    def _forget(self, digest: str) -> None:
        if self.index.remove(digest) is not None:  # deleted behind our back
            self.persist.queue(*cacheindex.forget(digest))
            self._gauges()

    async def read_small(self, digest: str) -> bytes | None:
        """A manifest's bytes."""
        opened = await self.open(digest)
        if opened is None:
            return None
        try:
            return await opened.read(0, opened.size)
        finally:
            await opened.close()

    # --- filling --------------------------------------------------------------------
    def fetch(self, digest: str, origin: Binding, opener: Opener) -> tuple[Flight, bool]:
        """The flight for this digest, started if none runs; True when this joined one."""
        flight = self.flights.get(digest)
        if flight is not None:
            metrics.COALESCED.inc()
            return flight, True
        return self.flights.start(digest, origin, self.backend, opener, self._landed, self._claim), False

    def _landed(self, flight: Flight) -> None:
        if flight.failed is not None and flight.failed.reason == "digest":
            metrics.VERIFICATION_FAILURES.inc()
        if flight.written:
            metrics.BYTES.labels("upstream").inc(flight.written)
        if not flight.kept:
            return
        self._add(Entry(flight.digest, flight.written, flight.media_type, self.clock()), flight.bindings)

    async def keep(self, digest: str, data: bytes, media_type: str | None, binding: Binding) -> None:
        """A small verified object (a manifest), written at once."""
        if self.index.get(digest) is None:
            try:
                await self.backend.put(digest, data)
            except OSError as exc:
                log.error("cache: could not keep %s: %s", digest, exc.strerror)
                return
            self._add(Entry(digest, len(data), media_type, self.clock()), {binding})
        else:
            self.bind(digest, binding)

    def _add(self, entry: Entry, bindings: set[Binding]) -> None:
        if entry.size > self.index.max_size:
            # Larger than the whole cache: served, never kept.
            self._schedule(self.backend.delete(entry.digest))
            return
        self.index.add(entry)
        self.persist.queue(cacheindex.put_entry(entry.digest, entry.size, entry.media_type, entry.last_access))
        for binding in bindings:
            self.bind(entry.digest, binding)
        self._schedule(self._evict())
        self._gauges()

    def _schedule(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # held, so it is not collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def _evict(self) -> None:
        for entry in self.index.victims():
            metrics.EVICTIONS.inc()
            self.persist.queue(*cacheindex.forget(entry.digest))
            # A reader that has it open keeps reading: unlink leaves its descriptor whole.
            with contextlib.suppress(OSError):
                await self.backend.delete(entry.digest)
        self._gauges()

    async def _shared_evictions(self) -> None:
        while True:
            await asyncio.sleep(self.shared_evict_every)
            try:
                await self.evict_shared()
            except Exception as exc:  # the store is down: the next round tries again
                log.warning("cache: shared eviction failed (%s)", type(exc).__name__)

    async def evict_shared(self) -> int:
        """max_size across every process sharing the store: while the store's entries add up
        to more, the least recently used of them (by the last use each process writes behind,
        so to within its touch interval) are deleted from the backend and forgotten in the
        store. One process at a time, the holder of a lease row. A process that still lists an
        evicted object finds it gone when it opens it and fetches it again. Objects evicted."""
        await self.persist.flush()  # this process's own changes counted first
        async with self.leases.claim(SHARED_EVICT_LEASE) as mine:
            if not mine:
                return 0
            excess = await cacheindex.stored_total(self.store) - self.index.max_size
            if excess <= 0:
                return 0
            evicted: list[str] = []
            for row in await cacheindex.least_recent(self.store, SHARED_EVICT_ROWS):
                if excess <= 0:
                    break
                if self.flights.get(row["digest"]) is not None:
                    continue  # being filled here: its entry is about to be new
                evicted.append(row["digest"])
                excess -= int(row["size"])
            await self._delete_everywhere(evicted)
            metrics.EVICTIONS.inc(len(evicted))
            if evicted:
                log.info("cache: %d object(s) evicted to keep the shared cache within max_size", len(evicted))
            return len(evicted)

    # --- tags -----------------------------------------------------------------------
    def tag(self, key: TagKey) -> TagEntry | None:
        return self.index.tag(key)

    def set_tag(self, key: TagKey, digest: str, media_type: str) -> None:
        entry = TagEntry(digest, media_type, self.clock())
        self.index.set_tag(key, entry)
        self.persist.queue(cacheindex.put_tag(key, digest, media_type, entry.checked_at))

    def drop_tag(self, key: TagKey) -> None:
        self.index.drop_tag(key)
        self.persist.queue(cacheindex.drop_tag(key))

    # --- counting -------------------------------------------------------------------
    def hit(self, kind: str) -> None:
        self.hits += 1
        metrics.HITS.labels(kind).inc()

    def miss(self, kind: str) -> None:
        self.misses += 1
        metrics.MISSES.labels(kind).inc()

    def _gauges(self) -> None:
        metrics.SIZE.set(self.index.total)
        metrics.ENTRIES.set(len(self.index.entries))

    # --- the vendor API -------------------------------------------------------------
    def stats(self, registry_ids: set[str] | None = None) -> dict[str, int | float]:
        """The whole cache's size and hit ratio; with `registry_ids`, also what those registries bound."""
        total = self.hits + self.misses
        out: dict[str, int | float] = {
            "sizeBytes": self.index.total,
            "maxSizeBytes": self.index.max_size,
            "entries": len(self.index.entries),
            "hits": self.hits,
            "misses": self.misses,
            "hitRatio": round(self.hits / total, 4) if total else 0.0,
        }
        if registry_ids is not None:
            pairs = self.index.select(registry_ids)
            digests = {d for d, _ in pairs}
            out["teamEntries"] = len(digests)
            out["teamBytes"] = sum(e.size for d in digests if (e := self.index.get(d)) is not None)
        return out

    def entries(
        self, registry_ids: set[str], repository: str | None = None, digest: str | None = None
    ) -> list[tuple[str, Binding, Entry]]:
        out = []
        for d, b in self.index.select(registry_ids, repository, digest):
            entry = self.index.get(d)
            if entry is not None:
                out.append((d, b, entry))
        return out

    async def purge(self, registry_ids: set[str], repository: str | None = None, digest: str | None = None) -> Purged:
        """Remove these registries' bindings (and tags) across every process sharing the store:
        the store's too, not only those this process's index knows. An object goes from the
        backend only when no binding of anyone is left on it, here or in the store: another
        team's copy is never deleted. The other processes are told (CHANGED) and drop what
        the store no longer has (`resync`)."""
        await self.persist.flush()  # this process's own bindings are in the store first
        pairs = set(self.index.select(registry_ids, repository, digest))
        pairs |= {
            (row["digest"], (row["registry_id"], row["repository"]))
            for row in await cacheindex.of_registries(self.store, "cache_bindings", registry_ids, repository, digest)
        }
        for d, b in pairs:
            self.index.unbind(d, b)
            self.persist.queue(cacheindex.unbind(*b, d))
        tags = set(self.index.tags_of(registry_ids, repository, digest))
        tags |= {
            (row["registry_id"], row["repository"], row["tag"], row["accept"])
            for row in await cacheindex.of_registries(self.store, "cache_tags", registry_ids, repository, digest)
        }
        for key in tags:
            self.drop_tag(key)
        await self.persist.flush()
        touched = sorted({d for d, _ in pairs})
        still_bound = await cacheindex.bound_digests(self.store, touched)
        unbound = [d for d in touched if not self.index.bindings.get(d) and d not in still_bound]
        await self._delete_everywhere(unbound)
        await self.store.notify(CHANGED)
        return Purged(len(pairs), len(unbound), len(tags))

    async def _delete_everywhere(self, digests: list[str]) -> None:
        """Objects no process may serve any more (evicted or purged): out of this index, out of
        the backend (one already gone counts the same), and their rows out of the store in one
        transaction."""
        for d in digests:
            self.index.remove(d)
            with contextlib.suppress(OSError):
                await self.backend.delete(d)
        await cacheindex.run(self.store, [st for d in digests for st in cacheindex.forget(d)])
        self._gauges()

    def changed_elsewhere(self) -> None:
        """Another process purged (Store.listen, kind CHANGED): resync in the background."""
        self._schedule(self._resync_logged())

    async def _resync_logged(self) -> None:
        try:
            await self.resync()
        except Exception as exc:  # the next notice, or a restart, tries again
            log.warning("cache: resync with the store failed (%s)", type(exc).__name__)

    async def resync(self) -> None:
        """Drop from the memory index what the store no longer has: entries (objects another
        process deleted), bindings and tags (purged elsewhere). What this process added is
        written first, so nothing of its own is dropped."""
        await self.persist.flush()
        rows, bindings, tags = await cacheindex.load(self.store)
        stored = {row["digest"] for row in rows}
        bound = {(b["digest"], (b["registry_id"], b["repository"])) for b in bindings}
        tagged = {(t["registry_id"], t["repository"], t["tag"], t["accept"]) for t in tags}
        for d in [d for d in self.index.entries if d not in stored and self.flights.get(d) is None]:
            self.index.remove(d)
        for d, held in list(self.index.bindings.items()):
            for b in [b for b in held if (d, b) not in bound]:
                self.index.unbind(d, b)
        for key in [k for k in self.index.tags if k not in tagged]:
            self.index.drop_tag(key)
        self._gauges()
