"""SQLite driver: one connection on aiosqlite's worker thread, WAL journal."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.store.base import Row, Store

BUSY_TIMEOUT_MS = 10_000


class SQLiteStore(Store):
    one_host = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # One connection: transactions must not interleave.
        self._tx = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        if fresh:
            os.chmod(self.path, 0o600)
        # Several writers (the workers of `serve --workers N`, the CLI) take turns: a writer
        # waits up to this long for another's transaction (all are short: a pull-log batch,
        # a bootstrap step, a key rotation's reseal). Set first: switching to WAL writes too.
        await self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # WAL lets readers (other workers, the CLI, tests) read while one process writes.
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self.migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self.db.execute(sql, tuple(params)) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def execute_many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        db = self.db
        async with self._tx:
            await db.execute("BEGIN IMMEDIATE")
            try:
                # A run of one statement (a batch's rows) is one executemany: one trip to the thread.
                for sql, run in itertools.groupby(statements, key=lambda stmt: stmt[0]):
                    await db.executemany(sql, [tuple(params) for _, params in run])
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
