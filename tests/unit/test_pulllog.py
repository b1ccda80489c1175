"""The pull log writer on its own: bounded queue, batches, drops counted, retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from proxy.config import PullLogSection
from proxy.pulllog import PullEvent, PullLog, now_iso
from proxy.store.base import to_stored_time
from proxy.store.sqlite import SQLiteStore


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "pl.db")
    await s.open()
    yield s
    await s.close()


def event(i: int, team: str = "t1", when: str | None = None) -> PullEvent:
    return PullEvent(when or now_iso(), team, f"c{i}", "app", "reg", "manifest", "vendor/app", f"v{i}", 200, 10 * i)


async def count(store: SQLiteStore) -> int:
    row = await store.fetchone("SELECT COUNT(*) AS n FROM pull_logs")
    return int(row["n"]) if row else 0


async def wait_for(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_full_queue_drops_and_counts_without_waiting(store: SQLiteStore):
    log = PullLog(store, PullLogSection(queue_size=3, batch_size=2, flush_seconds=0.02))
    for i in range(5):
        log.record(event(i))  # the writer is not running: the queue fills
    assert log.dropped == 2
    log.start()
    await wait_for(lambda: log.written == 3)
    await log.close()
    rows = await store.pull_logs("t1")
    assert sorted(r["reference"] for r in rows) == ["v0", "v1", "v2"]
    assert {r["success"] for r in rows} == {1} and {r["bytes"] for r in rows} == {0, 10, 20}


async def test_a_slow_store_never_slows_the_request_path(store: SQLiteStore):
    class Slow:
        def __init__(self) -> None:
            self.batches: list[int] = []

        async def insert_pull_logs(self, rows: Sequence[Sequence[Any]]) -> None:
            self.batches.append(len(rows))
            await asyncio.sleep(0.3)

    slow = Slow()
    log = PullLog(slow, PullLogSection(queue_size=100, batch_size=50, flush_seconds=0.05))  # type: ignore[arg-type]
    log.start()
    started = time.perf_counter()
    for i in range(1000):
        log.record(event(i))
    assert time.perf_counter() - started < 0.1  # 1000 records, no waiting on the store
    assert log.dropped == 900  # the queue held 100; the rest were counted, not queued
    await wait_for(lambda: sum(slow.batches) == 100)
    assert max(slow.batches) <= 50 and len(slow.batches) >= 2  # written in bounded batches
    await log.close()


class Flaky:
    """A store whose first `failures` pull-log writes raise (as a locked database does)."""

    def __init__(self, store: SQLiteStore, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    async def insert_pull_logs(self, rows: Sequence[Sequence[Any]]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError("database is locked")
        await self.store.insert_pull_logs(rows)


async def test_a_failed_write_is_tried_again_and_nothing_is_lost(store: SQLiteStore, caplog: pytest.LogCaptureFixture):
    flaky = Flaky(store, failures=2)
    log = PullLog(flaky, PullLogSection(flush_seconds=0.01, write_attempts=3, retry_seconds=0.01))  # type: ignore[arg-type]
    log.start()
    log.record(event(1))
    await wait_for(lambda: log.written == 1)
    log.record(event(2))
    await wait_for(lambda: log.written == 2)
    await log.close()
    assert (flaky.calls, log.dropped) == (4, 0)  # 2 failed + 1 for each batch
    assert sorted(r["reference"] for r in await store.pull_logs("t1")) == ["v1", "v2"]  # each row once
    assert "trying again" in caplog.text and "dropped" not in caplog.text


async def test_a_batch_that_fails_every_attempt_is_counted_and_the_writer_goes_on(store: SQLiteStore):
    flaky = Flaky(store, failures=3)
    log = PullLog(flaky, PullLogSection(flush_seconds=0.01, write_attempts=3, retry_seconds=0.01))  # type: ignore[arg-type]
    log.start()
    log.record(event(1))
    await wait_for(lambda: log.dropped == 1)
    assert flaky.calls == 3  # every attempt, then dropped
    log.record(event(2))
    await wait_for(lambda: log.written == 1)
    await log.close()
    assert [r["reference"] for r in await store.pull_logs("t1")] == ["v2"]


async def test_close_writes_what_is_queued(store: SQLiteStore):
    log = PullLog(store, PullLogSection(flush_seconds=5))
    for i in range(7):
        log.record(event(i))
    await log.close()  # never started: close still writes the queue
    assert await count(store) == 7


async def test_retention_purges_old_rows(store: SQLiteStore):
    old = to_stored_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=31))
    recent = to_stored_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=29))
    await store.insert_pull_logs([event(1, when=old).row(), event(2, when=recent).row()])
    await PullLog(store, PullLogSection(retention_days=30)).purge()
    assert [r["reference"] for r in await store.pull_logs("t1")] == ["v2"]


async def test_queries_are_scoped_to_the_team(store: SQLiteStore):
    await store.insert_pull_logs([event(1, "t1").row(), event(2, "t2").row()])
    assert [r["reference"] for r in await store.pull_logs("t1")] == ["v1"]
    assert [r["reference"] for r in await store.pull_logs("t2")] == ["v2"]
