"""The pull log: who pulled what, written off the request path.

A request only puts an event on a bounded in-memory queue (never awaits, never
blocks); a background task writes events in batches, one transaction each.
When the queue is full the event is dropped and counted (`dropped`, and the
`pullgate_pull_log_dropped` metric): a slow database must never slow a pull. A batch
whose write fails is tried again (`write_attempts`, waits doubling from `retry_seconds`:
a database locked by a migration or a key rotation, a PostgreSQL failover) while new
events wait in the queue; only a batch that failed every attempt is dropped and counted.
Rows older than the retention are deleted hourly (by one worker of several).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

from proxy import metrics
from proxy.config import PullLogSection
from proxy.context import CTX_KEY
from proxy.logs import client_gone, reported_status
from proxy.store.base import Store, to_stored_time

log = logging.getLogger("pullgate.pulllog")

DROPPED = Counter(
    "pullgate_pull_log_dropped", "Pull log events dropped (queue full or write failed)", registry=metrics.REGISTRY
)
WRITTEN = Counter("pullgate_pull_log_written", "Pull log events written", registry=metrics.REGISTRY)

PURGE_EVERY = 3600.0


def now_iso() -> str:
    """Millisecond UTC times: they sort as text, so time-range queries are string compares."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class PullEvent:
    time: str
    team_id: str
    customer_id: str | None
    app_slug: str | None
    registry_slug: str | None
    action: str  # auth | manifest | HEAD | blob | tags | referrers
    image: str | None
    reference: str | None
    status: int
    bytes: int
    # False when the body was cut (the upstream broke, or its bytes missed the digest):
    # the status line said 200, but the pull did not succeed.
    complete: bool = True
    cache: str | None = None  # hit | miss (manifests and blobs, when the cache is on)

    def row(self) -> tuple[object, ...]:
        success = int(self.status < 400 and self.complete)
        return (
            self.time,
            self.team_id,
            self.customer_id,
            self.app_slug,
            self.registry_slug,
            self.action,
            self.image,
            self.reference,
            self.status,
            success,
            self.bytes,
            self.cache,
        )


WrittenHook = Callable[[list[PullEvent]], Awaitable[None]]


class PullLog:
    def __init__(
        self, store: Store, cfg: PullLogSection, on_written: WrittenHook | None = None, purge: bool = True
    ) -> None:
        self.store = store
        self.cfg = cfg
        # Told of each batch once it (and the egress rollup with it) is stored: thresholds.
        self.on_written = on_written
        # With several workers on one store, one of them deletes old rows (app.Worker).
        self.purges = purge
        self._queue: asyncio.Queue[PullEvent] = asyncio.Queue(cfg.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._idle = True  # waiting for an event: holds nothing, safe to cancel
        self._closing = False
        self.dropped = 0
        self.written = 0

    def record(self, event: PullEvent) -> None:
        """Called on the request path: O(1), never waits."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            DROPPED.inc()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pull-log-writer")

    async def close(self) -> None:
        """Stop the writer and write what is still queued.

        A writer holding a batch (gathering or writing it) finishes that batch first:
        cancelled there, the events it took off the queue would be lost (the rollup and
        thresholds with them) and a write cut mid-transaction might or might not land."""
        if self._task is not None:
            self._closing = True
            if self._idle:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            await self._write(self._take_batch([]))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        while not self._closing:
            self._idle = True
            first = await self._queue.get()
            self._idle = False
            # Gather for a moment so a busy proxy writes few, large transactions.
            deadline = loop.time() + self.cfg.flush_seconds
            batch = [first]
            while len(batch) < self.cfg.batch_size and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._write(batch)
            if self.purges and self.cfg.retention_days and loop.time() >= next_purge and not self._closing:
                next_purge = loop.time() + PURGE_EVERY
                await self.purge()

    def _take_batch(self, batch: list[PullEvent]) -> list[PullEvent]:
        while len(batch) < self.cfg.batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write(self, batch: list[PullEvent]) -> None:
        if not batch:
            return
        rows = [e.row() for e in batch]
        wait = self.cfg.retry_seconds
        for attempt in range(1, self.cfg.write_attempts + 1):
            try:
                # One transaction: a failed one left nothing behind, so trying again adds
                # each row once.
                await self.store.insert_pull_logs(rows)
                break
            except Exception as exc:  # the log is best effort; the proxy keeps serving
                if attempt == self.cfg.write_attempts:
                    self.dropped += len(batch)
                    DROPPED.inc(len(batch))
                    log.error(
                        "pull log write failed %d time(s) (%s); %d event(s) dropped",
                        attempt,
                        type(exc).__name__,
                        len(batch),
                    )
                    return
                log.warning(
                    "pull log write failed (%s); trying again in %.1f s (attempt %d of %d)",
                    type(exc).__name__,
                    wait,
                    attempt,
                    self.cfg.write_attempts,
                )
                await asyncio.sleep(wait)
                wait *= 2
        self.written += len(batch)
        WRITTEN.inc(len(batch))
        if self.on_written is not None:
            try:
                await self.on_written(batch)
            except Exception as exc:  # the batch is stored; a failed check is tried with the next one
                log.error("after-write hook failed (%s)", type(exc).__name__)

    async def purge(self) -> None:
        before = dt.datetime.now(dt.UTC) - dt.timedelta(days=self.cfg.retention_days)
        try:
            await self.store.purge_pull_logs(to_stored_time(before))
        except Exception as exc:
            log.error("pull log purge failed (%s)", type(exc).__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(pulllog: PullLog) -> Middleware:
    """Records each proxy request that a customer was identified for, after its answer.

    Sits outside the OCI error middleware, so refusals are logged with their status.
    """

    @web.middleware
    async def record_pull(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        resp: web.StreamResponse | None = None
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            c = request.get(CTX_KEY)
            if c is not None and c.customer_id and c.team_id and c.action:
                # A client that hung up before its answer went out is recorded as 499.
                finished = resp is not None and getattr(resp, "_eof_sent", False)
                status = reported_status(status, c, not finished and client_gone(request))
                sent = c.bytes_sent
                # Small JSON answers (tags, token) are not relayed: count their body.
                if not sent and isinstance(resp, web.Response) and request.method != "HEAD":
                    sent = len(resp.body) if isinstance(resp.body, bytes) else 0
                event = PullEvent(
                    now_iso(),
                    c.team_id,
                    c.customer_id,
                    c.app,
                    c.registry,
                    c.action,
                    c.image,
                    c.reference,
                    status,
                    sent,
                    complete=c.aborted is None,
                    cache=c.cache,
                )
                pulllog.record(event)

    return record_pull
