"""PostgreSQL driver (asyncpg): a connection pool shared by several replicas.

The queries in proxy.store.base use `?` placeholders; they are rewritten to
asyncpg's `$1..$n` once per distinct statement. Changes that other replicas
cache are announced with NOTIFY on one channel; every replica LISTENs on a
dedicated connection and drops its caches when one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import asyncpg

from proxy.store.base import Row, Store, StoreUnavailable

log = logging.getLogger("pullgate.store")

CHANNEL = "pullgate_changes"
LISTENER_NAME = "pullgate-listen"
# One advisory lock key for "schema and bootstrap": replicas starting together take turns.
LOCK_KEY = 0x70756C6C67617465  # "pullgate"
BACKOFF_MAX = 5.0
PING_SECONDS = 10.0
# What a database that is down or restarting raises (OSError: refused, reset, timed out).
UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    log.warning("database unavailable: %s", type(exc).__name__)
    return StoreUnavailable()


@functools.lru_cache(maxsize=1024)
def to_dollar(sql: str) -> str:
    """`?` -> `$1..$n`, leaving `?` inside '...' literals and "..." identifiers alone."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:  # a doubled quote ('') closes and reopens: same result
                quote = None
            out.append(ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


class PostgresStore(Store):
    def __init__(self, dsn: str, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self.min_size, max_size=self.max_size)
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return [dict(r) for r in await self.pool.fetch(to_dollar(sql), *params)]
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from None

    async def execute_many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        try:
            await self._execute_many(statements)
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from None

    async def _execute_many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # A run of one statement (a batch's rows) is one executemany: one round of the protocol.
            for sql, run in itertools.groupby(statements, key=lambda stmt: stmt[0]):
                rows = [tuple(params) for _, params in run]
                if len(rows) == 1:
                    await conn.execute(to_dollar(sql), *rows[0])
                else:
                    await conn.executemany(to_dollar(sql), rows)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        # A session-level advisory lock on a connection of its own; the work inside
        # runs on other pool connections while the other replicas wait here.
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)

    async def migrate(self) -> None:
        # Two replicas starting at once would both try CREATE TABLE.
        async with self.exclusive():
            await super().migrate()

    # --- change propagation ---------------------------------------------------
    async def notify(self, kind: str) -> None:
        try:
            await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, kind)
        except Exception as exc:  # the change is stored; other replicas still see it within the TTL
            log.error("change notification (%s) failed: %s", kind, type(exc).__name__)

    async def listen(self, callback: Callable[[str], None], ready_timeout: float = 5.0) -> None:
        if self._listener is not None:
            raise RuntimeError("already listening")
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(callback, ready), name="pullgate-listen")
        # Wait briefly for the first LISTEN, so a change right after start is not missed;
        # if the database is away, the task keeps trying in the background.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), ready_timeout)

    async def _listen(self, callback: Callable[[str], None], ready: asyncio.Event) -> None:
        delay = 0.1
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                # Named, so an operator can tell it from the pool in pg_stat_activity.
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": LISTENER_NAME})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())

                def on_notify(_c: Any, _pid: int, _channel: str, payload: object) -> None:
                    try:
                        callback(str(payload))  # asyncpg's stubs type it as object; it is the NOTIFY text
                    except Exception:
                        log.exception("change callback failed")

                await conn.add_listener(CHANNEL, on_notify)
                if not first:
                    # Changes made while we were away were not heard: drop the caches now.
                    on_notify(conn, 0, CHANNEL, "reconnect")
                    log.info("listening for changes again")
                first = False
                delay = 0.1
                ready.set()
                # The termination listener fires when the server ends the session; a dead
                # peer is found by a ping (LISTEN again: a no-op that keeps the query text).
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), PING_SECONDS)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.execute(f'LISTEN "{CHANNEL}"'), PING_SECONDS)
                log.warning("change listener connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change listener: %s; retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
