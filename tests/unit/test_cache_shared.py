"""Processes sharing one store and one backend (replicas on a bucket, workers on a disk),
in process: fill leases, and what one process stored found by another on a miss."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.app import open_cache
from proxy.cache import metrics
from proxy.cache.fs import FilesystemBackend
from proxy.cache.lease import FillLeases
from proxy.cache.service import Cache
from proxy.store import fills
from proxy.store.sqlite import SQLiteStore
from tests.unit.test_cache_units import OCI, A, Upstream, _read_all, open_cache_store, sha
from tests.unit.test_config import _load

B = ("reg-a", "vendor/b")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = await open_cache_store(tmp_path / "db.sqlite")
    yield s
    await s.close()


async def _two_processes(tmp_path: Path, store: SQLiteStore) -> tuple[Path, Cache, Cache]:
    """Two caches on one store and one disk, started: two workers of one host."""
    root = tmp_path / "c"
    one = Cache(FilesystemBackend(root), store, 1 << 30, 60, True)
    two = Cache(FilesystemBackend(root), store, 1 << 30, 60, True)
    await one.start()
    await two.start()
    return root, one, two


def _objects(root: Path) -> list[Path]:
    return [p for p in (root / "blobs").rglob("*") if p.is_file()]


async def test_one_holder_per_digest_until_released_or_expired(store: SQLiteStore):
    now = [1000.0]
    a = FillLeases(store, "host:1:aa", clock=lambda: now[0])
    b = FillLeases(store, "host:2:bb", clock=lambda: now[0])
    async with a.claim("sha256:d") as first:
        async with b.claim("sha256:d") as second:
            assert (first, second) == (True, False)
        async with b.claim("sha256:other") as elsewhere:
            assert elsewhere  # a lease is per digest
    async with b.claim("sha256:d") as after_release:
        assert after_release
    # A holder that died stops renewing: its row is taken over once it expired, not before.
    assert await fills.take(store, "sha256:e", "host:1:aa", 1_000_000, 30_000)
    assert not await fills.take(store, "sha256:e", "host:2:bb", 1_029_999, 30_000)
    assert await fills.take(store, "sha256:e", "host:2:bb", 1_030_001, 30_000)
    assert not await fills.take(store, "sha256:e", "host:1:aa", 1_030_002, 30_000)


async def test_the_holder_renews_while_it_fills(store: SQLiteStore):
    now = [1000.0]
    a = FillLeases(store, "host:1:aa", ttl=30, renew_every=0.01, clock=lambda: now[0])
    async with a.claim("sha256:d"):
        now[0] = 5000.0
        deadline = asyncio.get_running_loop().time() + 5
        while (await store.fetchone("SELECT expires_at FROM cache_fills"))["expires_at"] != 5_030_000:
            assert asyncio.get_running_loop().time() < deadline, "not renewed"
            await asyncio.sleep(0.01)
    assert await store.fetchone("SELECT * FROM cache_fills") is None  # released


async def test_without_a_store_the_fill_goes_ahead(tmp_path: Path):
    closed = SQLiteStore(tmp_path / "db.sqlite")
    await closed.open()
    await closed.close()
    async with FillLeases(closed, "host:1:aa").claim("sha256:d") as fills_it:
        assert fills_it


async def test_what_one_process_stored_is_a_hit_for_another(tmp_path: Path, store: SQLiteStore):
    _, one, two = await _two_processes(tmp_path, store)
    body = os.urandom(300_000)
    up = Upstream(body)
    flight, _ = one.fetch(sha(body), A, up.open)
    assert await _read_all(flight) == body
    await flight.task  # published, and its entry written before the lease was let go
    key = ("reg-a", "vendor/a", "v1", "*")
    one.set_tag(key, sha(body), OCI)
    await one.persist.flush()
    assert two.held(sha(body)) is None
    entry = await two.adopt(sha(body))
    assert entry is not None and entry.size == len(body) and two.bound(sha(body), A)
    assert not await two.bound_anywhere(sha(body), B)
    one.bind(sha(body), B)
    await one.persist.flush()
    assert await two.bound_anywhere(sha(body), B) and two.bound(sha(body), B)
    tag = await two.adopt_tag(key)
    assert tag is not None and tag.digest == sha(body)
    assert await two.read_small(sha(body)) == body and up.calls == 1
    # What the store lists but this process's backend does not have is no hit.
    other = Cache(FilesystemBackend(tmp_path / "elsewhere"), store, 1 << 30, 60, True)
    await other.start()
    assert await other.adopt(sha(b"never")) is None
    for c in (one, two, other):
        await c.close()


async def test_while_one_process_fills_another_only_passes_the_bytes_through(tmp_path: Path, store: SQLiteStore):
    root, one, two = await _two_processes(tmp_path, store)
    body = os.urandom(1 << 20)
    first, second = Upstream(body, pieces=8), Upstream(body, pieces=8)
    first.gate.clear()
    passed = metrics.FILLS.labels("pass")._value.get()
    filling, _ = one.fetch(sha(body), A, first.open)
    reader = asyncio.create_task(_read_all(filling))
    await filling.started  # the lease is one's now
    through, joined = two.fetch(sha(body), A, second.open)
    assert not joined
    followers = await asyncio.gather(_read_all(through), _read_all(through))
    await through.task
    assert followers == [body, body] and second.calls == 1  # one upstream GET for two's clients
    assert not through.keeping and not through.kept and two.held(sha(body)) is None
    assert metrics.FILLS.labels("pass")._value.get() == passed + 1
    assert _objects(root) == []  # nothing stored by two; its spool is gone
    first.gate.set()
    assert await reader == body
    await filling.task
    assert filling.kept and len(_objects(root)) == 1 and first.calls == 1
    assert list((root / "tmp").iterdir()) == []
    # A process whose lease comes after another published does not store it again.
    late = Cache(FilesystemBackend(root), store, 1 << 30, 60, True)
    await late.start()
    late.index.remove(sha(body))  # as if its start had come before the publish
    third = Upstream(body)
    again, _ = late.fetch(sha(body), A, third.open)
    assert await _read_all(again) == body
    await again.task
    assert not again.kept and len(_objects(root)) == 1
    for c in (one, two, late):
        await c.close()


async def _fill(cache: Cache, body: bytes) -> None:
    flight, _ = cache.fetch(sha(body), A, Upstream(body).open)
    assert await _read_all(flight) == body
    await flight.task


async def test_max_size_holds_across_processes_sharing_the_store(tmp_path: Path, store: SQLiteStore):
    root = tmp_path / "c"
    now = [100.0]
    # Each process keeps its own index within max_size (1 MB); together they would hold 1.6 MB.
    one = Cache(FilesystemBackend(root), store, 1_000_000, 60, True, clock=lambda: now[0])
    two = Cache(FilesystemBackend(root), store, 1_000_000, 60, True, clock=lambda: now[0])
    await one.start()
    await two.start()
    old = [os.urandom(400_000) for _ in range(2)]
    new = [os.urandom(400_000) for _ in range(2)]
    for body in old:
        await _fill(one, body)
        now[0] += 1
    for body in new:
        await _fill(two, body)
        now[0] += 1
    await two.persist.flush()
    assert len(_objects(root)) == 4 and one.index.total == two.index.total == 800_000
    evictions = metrics.EVICTIONS._value.get()
    # The other process holds the round's lease: this one leaves the round to it.
    async with FillLeases(store, "host:9:zz").claim("evict:shared") as held:
        assert held and await one.evict_shared() == 0
    # Least recently used first, across both: one's two objects (0.8 MB left, within 1 MB).
    assert await one.evict_shared() == 2
    assert metrics.EVICTIONS._value.get() == evictions + 2
    assert sorted(p.name for p in _objects(root)) == sorted(sha(b).split(":")[1] for b in new)
    rows = await store.fetchall("SELECT digest FROM cache_entries ORDER BY digest")
    assert [r["digest"] for r in rows] == sorted(sha(b) for b in new)
    assert one.held(sha(old[0])) is None and one.index.total == 0
    assert await two.evict_shared() == 0  # within the limit now: nothing more goes
    assert [p.name for p in _objects(root)] and len(_objects(root)) == 2
    for c in (one, two):
        await c.close()


async def test_shared_eviction_runs_by_itself_and_spares_what_is_being_filled(tmp_path: Path, store: SQLiteStore):
    root = tmp_path / "c"
    now = [100.0]
    one = Cache(FilesystemBackend(root), store, 500_000, 60, True, clock=lambda: now[0], shared_evict_every=0.02)
    two = Cache(FilesystemBackend(root), store, 500_000, 60, True, clock=lambda: now[0])
    await two.start()
    kept, filling = os.urandom(300_000), os.urandom(300_000)
    await _fill(two, kept)
    await two.persist.flush()
    # A row for a digest this process is filling right now (as another replica's stale row
    # would be): the round passes over it.
    slow = Upstream(filling, pieces=4)
    slow.gate.clear()
    await one.start()
    flight, _ = one.fetch(sha(filling), A, slow.open)
    reader = asyncio.create_task(_read_all(flight))
    await flight.started
    await store.execute(
        "INSERT INTO cache_entries (digest, size, media_type, last_access) VALUES (?, ?, NULL, 1)",
        (sha(filling), len(filling)),
    )
    deadline = asyncio.get_running_loop().time() + 5
    while await store.fetchone("SELECT 1 AS x FROM cache_entries WHERE digest = ?", (sha(kept),)) is not None:
        assert asyncio.get_running_loop().time() < deadline, "the shared eviction never ran"
        await asyncio.sleep(0.02)
    assert await store.fetchone("SELECT 1 AS x FROM cache_entries WHERE digest = ?", (sha(filling),)) is not None
    slow.gate.set()
    assert await reader == filling
    await flight.task
    assert one.held(sha(filling)) is not None
    # Evicted for every process: one that still lists it finds it gone, and forgets it.
    assert two.held(sha(kept)) is not None and await two.open(sha(kept)) is None
    assert two.held(sha(kept)) is None and await two.adopt(sha(kept)) is None
    for c in (one, two):
        await c.close()


async def test_the_shared_limit_runs_where_every_process_on_the_store_shares_the_disk(tmp_path: Path):
    cfg = _load(tmp_path, {"cache": {"backend": "filesystem", "path": str(tmp_path / "c"), "max_size": "1MiB"}})
    assert cfg.cache.shared_eviction_seconds == 30  # the default

    class ElsewhereToo(SQLiteStore):
        one_host = False  # as PostgreSQL: replicas on other hosts may each have a disk

    for store_class, shared in ((SQLiteStore, True), (ElsewhereToo, False)):
        store = store_class(tmp_path / f"{store_class.__name__}.sqlite")
        await store.open()
        cache = await open_cache(cfg, store, None)  # type: ignore[arg-type]  # no upstream for a disk
        assert cache is not None and cache.shared_eviction is shared
        assert (cache._shared_evictor is not None) is shared
        await cache.close()
        await store.close()


async def test_a_purge_reaches_what_other_processes_bound_and_they_resync(tmp_path: Path, store: SQLiteStore):
    _, one, two = await _two_processes(tmp_path, store)
    purged_body, kept = os.urandom(1000), os.urandom(1000)
    # Bound by `two` only: `one` started before and its index never saw them.
    await two.keep(sha(purged_body), purged_body, OCI, B)
    await two.keep(sha(kept), kept, OCI, A)
    two.bind(sha(kept), B)
    key = ("reg-a", "vendor/b", "v1", "*")
    two.set_tag(key, sha(purged_body), OCI)
    await two.persist.flush()
    assert one.held(sha(purged_body)) is None and one.held(sha(kept)) is None
    purged = await one.purge({"reg-a"}, "vendor/b")
    assert (purged.bindings, purged.deleted, purged.tags) == (2, 1, 1)
    # No binding of anyone left on one object: gone from the disk and the store. The other
    # is still bound to vendor/a: kept.
    assert await one.backend.size(sha(purged_body)) is None and await one.backend.size(sha(kept)) == 1000
    assert await store.fetchall("SELECT repository FROM cache_bindings") == [{"repository": "vendor/a"}]
    assert await store.fetchone("SELECT 1 AS x FROM cache_tags") is None
    # `two` is told (Store.notify): its index drops what the store no longer has, and keeps
    # what it added itself since, not yet written.
    own = os.urandom(1000)
    await two.keep(sha(own), own, OCI, A)
    assert two.bound(sha(kept), B) and two.tag(key) is not None
    two.changed_elsewhere()
    deadline = asyncio.get_running_loop().time() + 5
    while two.held(sha(purged_body)) is not None:
        assert asyncio.get_running_loop().time() < deadline, "no resync"
        await asyncio.sleep(0.01)
    assert not two.bound(sha(kept), B) and two.bound(sha(kept), A) and two.tag(key) is None
    assert two.held(sha(own)) is not None and two.bound(sha(own), A)
    for c in (one, two):
        await c.close()
