"""The cache's logic in process: the index (LRU, bindings, tags, purge selection), tag
revalidation decisions, single flight over a real temporary directory, the index in a
SQLite store across a restart, ranges, and the config keys."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from proxy.cache.fileio import write_all
from proxy.cache.flight import Backlog, FetchFailed, Source
from proxy.cache.fs import FilesystemBackend
from proxy.cache.index import CacheIndex, Entry, TagEntry
from proxy.cache.send import parse_range
from proxy.cache.service import Cache
from proxy.cache.tags import After, accept_kind, after_head, fresh
from proxy.config import ConfigError, load
from proxy.settings import parse_size
from proxy.store.sqlite import SQLiteStore

OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
A, B = ("reg-a", "vendor/a"), ("reg-a", "vendor/b")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- index --------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_down_to_the_bound():
    idx = CacheIndex(max_size=100)
    for i, d in enumerate(("d1", "d2", "d3")):
        idx.add(Entry(d, 40, None, float(i)))
    idx.touch("d1", 10.0)  # d1 used last: d2 is now the oldest
    victims = idx.victims()
    assert [v.digest for v in victims] == ["d2"]
    assert list(idx.entries) == ["d3", "d1"] and idx.total == 80
    assert idx.take_touched() == {"d1": 10.0} and idx.take_touched() == {}
    assert [v.digest for v in idx.victims(room_for=50)] == ["d3"]


def test_removing_a_digest_drops_its_bindings_and_the_tags_pointing_at_it():
    idx = CacheIndex(1000)
    idx.add(Entry("d1", 1, OCI, 0))
    idx.bind("d1", A)
    idx.set_tag(("reg-a", "vendor/a", "v1", "*"), TagEntry("d1", OCI, 0))
    idx.set_tag(("reg-a", "vendor/a", "v2", "*"), TagEntry("d2", OCI, 0))
    idx.remove("d1")
    assert not idx.bound("d1", A) and list(idx.tags) == [("reg-a", "vendor/a", "v2", "*")]


def test_bindings_are_per_registry_and_repository():
    idx = CacheIndex(1000)
    assert idx.bind("d", A) and not idx.bind("d", A)
    assert idx.bound("d", A) and not idx.bound("d", B) and not idx.bound("d", ("reg-b", "vendor/a"))
    idx.bind("d", ("reg-other", "vendor/a"))
    assert idx.select({"reg-a"}) == [("d", A)]
    assert idx.select({"reg-a", "reg-other"}, repository="vendor/a", digest="d") == [
        ("d", A),
        ("d", ("reg-other", "vendor/a")),
    ]
    idx.unbind("d", A)
    assert idx.select({"reg-a"}) == []


# --- tags ---------------------------------------------------------------------------------


def test_accept_kinds():
    assert accept_kind("") == "*"
    assert accept_kind("*/*") == "*"
    assert accept_kind(f"{OCI};q=0.9, {INDEX}") == accept_kind(f" {INDEX},{OCI}")
    assert accept_kind(OCI) != accept_kind(f"{OCI}, {INDEX}")
    every = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    every += "application/vnd.docker.distribution.manifest.list.v2+json, "
    every += "application/vnd.docker.distribution.manifest.v2+json"
    assert accept_kind(every) == "*"


def test_a_tag_is_fresh_for_tag_ttl():
    tag = TagEntry("d", OCI, checked_at=100.0)
    assert fresh(tag, 159.9, 60) and not fresh(tag, 160.0, 60) and not fresh(tag, 100.0, 0)


@pytest.mark.parametrize(
    ("status", "announced", "serve_stale", "want"),
    [
        (200, "sha256:same", True, After.SERVE),
        (200, "sha256:other", True, After.REFETCH),
        (200, None, True, After.REFETCH),  # the upstream did not say: GET it
        (404, None, True, After.NOT_FOUND),
        (None, None, True, After.STALE),  # unreachable
        (503, None, True, After.STALE),
        (500, None, True, After.STALE),
        (429, None, True, After.STALE),
        (429, None, False, After.FAIL),
        (None, None, False, After.FAIL),
        (401, None, True, After.FAIL),  # auth trouble is not an outage: the refusal stands
        (403, None, True, After.FAIL),
    ],
)
def test_revalidation_decisions(status, announced, serve_stale, want):
    assert after_head(status, announced, "sha256:same", serve_stale) is want


# --- ranges and sizes ---------------------------------------------------------------------


def test_ranges():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=100-", 100) is False
    assert parse_range("bytes=5-4", 100) is False
    assert parse_range("bytes=-0", 100) is False


def test_sizes():
    assert parse_size("20GiB", "k") == 20 << 30
    assert parse_size("500MB", "k") == 500_000_000
    assert parse_size("1048576", "k") == 1 << 20
    assert parse_size("1.5 KiB", "k") == 1536
    for bad in ("lots", "-1GiB", "20GiBs", ""):
        with pytest.raises(ConfigError, match=r"^k:"):
            parse_size(bad, "k")


def test_config_keys(tmp_path: Path):
    def cfg(cache: dict[str, object]) -> object:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"cache": cache}))
        return load(path, environ={})

    c = cfg({"backend": "filesystem", "path": "var/cache", "max_size": "1GiB", "tag_ttl": 5})
    assert c.cache.path == "var/cache" and c.cache.serve_stale is True  # type: ignore[attr-defined]
    assert load(None, environ={}).cache.backend == "filesystem"
    for bad, key in (
        ({"backend": "memcached"}, "cache.backend"),
        ({"max_size": "tiny"}, "cache.max_size"),
        ({"max_size": "10KiB"}, "cache.max_size"),
        ({"tag_ttl": -1}, "cache.tag_ttl"),
        ({"hit_io": "mmap"}, "cache.hit_io"),
        ({"backend": "s3"}, "cache.s3.bucket"),
        ({"s3": {"bucket": "b", "nope": 1}}, "cache.s3.nope"),
        ({"colour": "red"}, "cache.colour"),
    ):
        with pytest.raises(ConfigError, match=rf"^{key}"):
            cfg(bad)
    env = load(None, environ={"PULLGATE_CACHE_MAX_SIZE": "2GiB", "PULLGATE_CACHE_SERVE_STALE": "false"})
    assert env.cache.max_size == "2GiB" and env.cache.serve_stale is False


# --- single flight, verification, the store -----------------------------------------------


async def open_cache_store(path: Path) -> SQLiteStore:
    """A SQLite store with one registry, reg-a, for bindings to point at."""
    s = SQLiteStore(path)
    await s.open()
    team = await s.ensure_team("t")
    now = "2026-01-01T00:00:00+00:00"
    await s.execute(
        "INSERT INTO registries (id, team_id, slug, provider, endpoint, url, created_at, updated_at)"
        " VALUES ('reg-a', ?, 'a', 'other', 'a.test', 'http://a.test', ?, ?)",
        (team.id, now, now),
    )
    return s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = await open_cache_store(tmp_path / "db.sqlite")
    yield s
    await s.close()


class Upstream:
    """An opener: counts calls, sends `body` in pieces, each after `gate` allows it."""

    def __init__(self, body: bytes, pieces: int = 4, length: int | None = -1) -> None:
        self.body, self.pieces = body, pieces
        self.length = len(body) if length == -1 else length
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Source]:
        self.calls += 1
        yield Source(self.length, "application/octet-stream", self._chunks())

    async def _chunks(self) -> AsyncIterator[bytes]:
        step = max(1, len(self.body) // self.pieces)
        for i in range(0, len(self.body), step):
            await self.gate.wait()
            yield self.body[i : i + step]


async def _read_all(flight) -> bytes:
    """A reader as send.py is: up to `readable()`, waiting for progress, failing with the fetch."""
    flight.join()
    try:
        await flight.started
        out = bytearray()
        while True:
            limit = flight.readable()
            if len(out) < limit:
                out += os.pread(flight.fd, limit - len(out), len(out))
                continue
            if flight.verified and len(out) >= flight.written:
                return bytes(out)
            if flight.finished:
                raise flight.failed or AssertionError("ended unverified")
            await flight.progress()
    finally:
        flight.leave()


def test_write_all_writes_every_buffer_in_order_through_short_writes(tmp_path: Path, monkeypatch):
    chunks = [os.urandom(n) for n in (5, 0, 70_000, 1, 300_000)] * 300  # more buffers than IOV_MAX
    real = os.writev
    calls: list[int] = []

    def short(fd: int, views: list[memoryview]) -> int:
        """As the kernel may: takes the first half of the buffers, the last of them only in part."""
        calls.append(len(views))
        half = views[: len(views) // 2 + 1]
        half[-1] = half[-1][: max(1, len(half[-1]) // 3)]
        return real(fd, half)

    monkeypatch.setattr(os, "writev", short)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    seen: list[bytes] = []
    try:
        write_all(fd, chunks, seen.append)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"".join(chunks)
    assert seen == chunks  # what a hash would have been fed: every chunk, in order
    assert max(calls) <= 1024 and len(calls) > 2


async def test_the_backlog_hands_the_writer_everything_received_and_bounds_the_receiver():
    backlog = Backlog(limit=10)
    for piece in (b"abcd", b"efgh"):
        await backlog.put(piece)
    assert await backlog.take() == [b"abcd", b"efgh"]  # one trip for all of it, not joined
    await backlog.put(b"0123456789")
    blocked = asyncio.ensure_future(backlog.put(b"x"))  # over the limit: waits for the writer
    await asyncio.sleep(0)
    assert not blocked.done()
    assert await backlog.take() == [b"0123456789"]
    await blocked
    waiting = asyncio.ensure_future(backlog.take())
    await asyncio.sleep(0)
    assert waiting.done() and waiting.result() == [b"x"]
    ended = asyncio.ensure_future(backlog.take())
    await asyncio.sleep(0)
    assert not ended.done()  # nothing yet: waits
    backlog.close()
    assert await ended is None


async def test_concurrent_misses_share_one_fetch_and_the_end_waits_for_the_hash(tmp_path: Path, store):
    cache = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 30, 60, True)
    await cache.start()
    body = os.urandom(1 << 20)
    up = Upstream(body, pieces=8)
    up.gate.clear()
    flight, joined = cache.fetch(sha(body), A, up.open)
    readers = [asyncio.create_task(_read_all(flight))]
    for _ in range(4):
        again, joined = cache.fetch(sha(body), A, up.open)
        assert again is flight and joined
        readers.append(asyncio.create_task(_read_all(again)))
    await flight.started
    up.gate.set()
    results = await asyncio.gather(*readers)
    assert results == [body] * 5 and up.calls == 1
    await flight.task  # the publish (an fsync) may end after the readers
    assert cache.held(sha(body)) is not None and cache.bound(sha(body), A)
    assert flight.fd is None  # closed once the last reader left
    assert await cache.read_small(sha(body)) == body
    await cache.close()


async def test_readers_never_see_the_last_byte_before_verification(tmp_path: Path, store):
    cache = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 30, 60, True)
    await cache.start()
    body = b"x" * 1000
    up = Upstream(body, pieces=1)
    up.gate.clear()
    flight, _ = cache.fetch(sha(body), A, up.open)
    await flight.started
    assert flight.readable() == 0
    flight.written = 1000  # as if written, not yet hashed
    assert flight.readable() == 999
    flight.written = 0
    up.gate.set()
    assert await _read_all(flight) == body
    await cache.close()


@pytest.mark.parametrize("length", [-1, None], ids=["content-length", "chunked"])
async def test_a_mismatch_fails_every_reader_and_keeps_nothing(tmp_path: Path, store, length):
    cache = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 30, 60, True)
    await cache.start()
    good = os.urandom(300_000)
    up = Upstream(good[:-1] + bytes([good[-1] ^ 1]), pieces=3, length=length)
    up.gate.clear()
    flight, _ = cache.fetch(sha(good), A, up.open)
    readers = [asyncio.create_task(_read_all(flight)) for _ in range(3)]
    await flight.started
    up.gate.set()
    for outcome in await asyncio.gather(*readers, return_exceptions=True):
        assert isinstance(outcome, FetchFailed) and outcome.reason == "digest"
    assert cache.held(sha(good)) is None and cache.flights.get(sha(good)) is None
    assert list((tmp_path / "c" / "tmp").iterdir()) == [] and not list((tmp_path / "c" / "blobs").rglob("*.*"))
    # The next one goes upstream again.
    up2 = Upstream(good)
    flight2, joined = cache.fetch(sha(good), A, up2.open)
    assert not joined and await _read_all(flight2) == good and up2.calls == 1
    await cache.close()


async def test_an_upstream_error_before_the_body_reaches_every_reader(tmp_path: Path, store):
    cache = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 30, 60, True)
    await cache.start()

    @contextlib.asynccontextmanager
    async def refused() -> AsyncIterator[Source]:
        raise LookupError("404")
        yield  # pragma: no cover

    flight, _ = cache.fetch(sha(b"a"), A, refused)
    outcomes = await asyncio.gather(_read_all(flight), _read_all(flight), return_exceptions=True)
    assert [type(o) for o in outcomes] == [LookupError, LookupError]
    assert cache.flights.get(sha(b"a")) is None
    await cache.close()


async def test_the_index_survives_a_restart_and_eviction_is_lru(tmp_path: Path, store):
    ticks = iter(range(1000, 2000))
    cache = Cache(FilesystemBackend(tmp_path / "c"), store, 3000, 60, True, clock=lambda: float(next(ticks)))
    await cache.start()
    blobs = [os.urandom(1000) for _ in range(3)]
    for b in blobs:
        await cache.keep(sha(b), b, OCI, A)
    cache.set_tag(("reg-a", "vendor/a", "v1", "*"), sha(blobs[0]), OCI)
    await cache.open(sha(blobs[0]))  # used: blobs[1] is now the oldest
    await cache.close()

    again = Cache(FilesystemBackend(tmp_path / "c"), store, 3000, 60, True, clock=lambda: float(next(ticks)))
    await again.start()
    assert [e for e in again.index.entries] == [sha(blobs[1]), sha(blobs[2]), sha(blobs[0])]
    assert again.bound(sha(blobs[2]), A) and again.tag(("reg-a", "vendor/a", "v1", "*")) is not None
    extra = os.urandom(1000)
    await again.keep(sha(extra), extra, OCI, A)
    await asyncio.sleep(0)  # the eviction task scheduled by keep() runs
    await again._evict()
    assert again.held(sha(blobs[1])) is None and again.held(sha(blobs[0])) is not None
    assert again.index.total <= 3000
    await again.close()


async def test_purge_removes_a_teams_bindings_and_only_unshared_files(tmp_path: Path, store):
    cache = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 30, 60, True)
    await cache.start()
    shared, own = os.urandom(100), os.urandom(100)
    await cache.keep(sha(shared), shared, OCI, A)
    cache.bind(sha(shared), ("reg-other-team", "vendor/x"))
    await cache.keep(sha(own), own, OCI, A)
    cache.set_tag(("reg-a", "vendor/a", "v1", "*"), sha(own), OCI)
    purged = await cache.purge({"reg-a"})
    assert (purged.bindings, purged.deleted, purged.tags) == (2, 1, 1)
    assert cache.held(sha(shared)) is not None and cache.bound(sha(shared), ("reg-other-team", "vendor/x"))
    assert await cache.backend.size(sha(shared)) == 100 and await cache.backend.size(sha(own)) is None
    await cache.close()


async def test_start_removes_only_temporaries_of_writers_that_are_gone(tmp_path: Path):
    """`serve --workers N`: a worker (re)starting must not delete what another is filling."""
    backend = FilesystemBackend(tmp_path / "c")
    (tmp_path / "c" / "tmp").mkdir(parents=True)
    gone = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids are below it: no process has it
    names = {
        "live": f"sha256-{'a' * 64}.{os.getppid()}.0a0b0c0d0e0f.part",  # the test runner's parent runs
        "dead": f"sha256-{'b' * 64}.{gone}.0a0b0c0d0e0f.part",
        "old": "sha256-dead.beef.part",  # a name from before pids were recorded
        "own": f"sha256-{'c' * 64}.{os.getpid()}.0a0b0c0d0e0f.part",
    }
    for name in names.values():
        (tmp_path / "c" / "tmp" / name).write_bytes(b"x")
    await backend.start()
    assert sorted(p.name for p in (tmp_path / "c" / "tmp").iterdir()) == [names["live"]]


async def test_readiness_fails_when_the_cache_directory_is_gone(tmp_path: Path):
    backend = FilesystemBackend(tmp_path / "c")
    await backend.start()
    assert await backend.ready()
    (tmp_path / "c" / "tmp").rmdir()
    assert not await backend.ready()


async def test_chunks_give_exactly_the_range_asked(tmp_path: Path):
    """Opened.chunks, the remote hit path's reader: the fs backend's gives the same bytes."""
    backend = FilesystemBackend(tmp_path / "c")
    await backend.start()
    data = os.urandom(9 * 1024 * 1024 + 7)  # more than two 4 MiB reads
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    await backend.put(digest, data)
    opened = await backend.open(digest)
    assert opened is not None
    try:
        for off, n in ((0, len(data)), (5, 4 * 1024 * 1024 + 3), (len(data) - 2, 10), (len(data), 5), (3, 0)):
            assert b"".join([c async for c in opened.chunks(off, n)]) == data[off : off + n]
    finally:
        await opened.close()
