"""Egress threshold notifications to the team's webhook.

After each pull-log batch is written (and the rollup with it), `pulls_written` asks the
store which customers of the batch are past their monthly threshold with no
notification yet, and records one for each: the row keyed by (customer, month) is the
"once a month" rule, decided by the database before anything is sent, so a restart or a
second replica never sends it again. The delivery loop then leases due notifications
(proxy.store.usage.claim_due), POSTs each, records every attempt, and retries a failure
with doubling waits up to `webhooks.max_attempts`; a lease left by a crashed replica
expires and another one takes over.

The POST goes through the upstream client's session, whose connector applies the
egress policy to every connection (the URL was also judged when it was set). Redirects
are not followed. `X-Pullgate-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact
body under the team's secret, when one is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable

import aiohttp

from proxy.secrets import Keyring
from proxy.settings import WebhooksSection
from proxy.store import usage
from proxy.store.base import Row, Store, new_id, parse_time
from proxy.upstream.client import UpstreamClient
from proxy.upstream.connector import EgressDenied, record_refusal

log = logging.getLogger("pullgate.webhooks")

EVENT = "egress.threshold_reached"
SIGNATURE_HEADER = "X-Pullgate-Signature"
LEASE_SECONDS = 120.0
SWEEP_SECONDS = 30.0  # also picks up what another replica left behind


def payload(customer_id: str, app_slug: str, month: str, spent: int, threshold: int) -> bytes:
    body = {
        "event": EVENT,
        "customerId": customer_id,
        "appSlug": app_slug,
        "month": month,
        "bytes": spent,
        "thresholdBytes": threshold,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, store: Store, keyring: Keyring, upstream: UpstreamClient, cfg: WebhooksSection) -> None:
        self.store = store
        self.keyring = keyring
        self.upstream = upstream
        self.cfg = cfg
        self.owner = new_id()  # this replica's name on the leases it takes
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- crossing: called after each pull-log batch ------------------------------------
    async def pulls_written(self, seen: Iterable[tuple[str, str]]) -> None:
        """`seen`: (customer id, stored time) of the batch's rows."""
        months: dict[str, set[str]] = {}
        for customer_id, time in seen:
            months.setdefault(time[:7], set()).add(customer_id)
        recorded = False
        for month, ids in sorted(months.items()):
            for row in await usage.crossed(self.store, sorted(ids), month):
                body = payload(row["customer_id"], row["app_slug"], month, row["bytes"], row["threshold"])
                await usage.record_notification(self.store, row["customer_id"], row["team_id"], month, body)
                recorded = True
        if recorded:
            self._wake.set()

    # --- delivery ----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_due()
                wait = await self._until_next_due()
            except Exception as exc:  # the database may be away: try again later
                log.error("webhook delivery round failed (%s)", type(exc).__name__)
                wait = SWEEP_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _until_next_due(self) -> float:
        due = parse_time(await usage.next_due(self.store))
        if due is None:
            return SWEEP_SECONDS
        left = (due - dt.datetime.now(dt.UTC)).total_seconds()
        return min(SWEEP_SECONDS, max(0.01, left))

    async def deliver_due(self) -> None:
        notes = await usage.claim_due(self.store, self.owner, LEASE_SECONDS)
        results = await asyncio.gather(*(self._attempt(n) for n in notes), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # its lease runs out; a later round tries it again
                log.error("webhook delivery failed to run (%s)", type(result).__name__)

    async def _attempt(self, note: Row) -> None:
        attempt = int(note["attempts"]) + 1
        hook = await usage.webhook(self.store, note["team_id"])
        if hook is None:
            await usage.attempted(
                self.store,
                note,
                url="",
                attempt=attempt,
                status=None,
                error="no webhook is set for the team",
                ok=False,
                state="no_webhook",
                retry_at=None,
            )
            return
        status, error = await self._post(hook, note["body"].encode())
        ok = status is not None and 200 <= status < 300
        if ok:
            state, retry_at = "delivered", None
        elif attempt >= self.cfg.max_attempts:
            state, retry_at = "failed", None
            log.warning("webhook: notification for a customer failed after %d attempts", attempt)
        else:
            wait = min(self.cfg.max_backoff_seconds, self.cfg.backoff_seconds * 2 ** (attempt - 1))
            state, retry_at = "pending", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
        await usage.attempted(
            self.store,
            note,
            url=hook["url"],
            attempt=attempt,
            status=status,
            error=error,
            ok=ok,
            state=state,
            retry_at=retry_at,
        )
        if state == "pending":
            self._wake.set()  # recompute the wait: this retry may be the next one due

    async def _post(self, hook: Row, body: bytes) -> tuple[int | None, str | None]:
        headers = {"Content-Type": "application/json", "User-Agent": "pullgate-webhook", "X-Pullgate-Event": EVENT}
        if hook["secret_sealed"]:
            try:
                secret = self.keyring.open(hook["secret_sealed"], usage.webhook_aad(hook["team_id"]))
            except Exception:  # its key left the keyring: an attempt that failed, not a loop that does
                return None, "the signing secret cannot be decrypted (set the webhook's secret again)"
            headers[SIGNATURE_HEADER] = signature(secret, body)
        try:
            async with asyncio.timeout(self.cfg.timeout_seconds):
                async with self.upstream.session.post(
                    hook["url"], data=body, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.content.read(4096)  # a short look, so the connection can be reused
                    status = resp.status
        except EgressDenied as exc:
            record_refusal("", exc, "the team webhook")
            return None, f"refused by the egress policy (rule {exc.refusal.rule})"
        except TimeoutError:
            return None, f"no answer within {self.cfg.timeout_seconds:g}s"
        except aiohttp.ClientError as exc:
            return None, f"connection failed ({type(exc).__name__})"
        return status, None if 200 <= status < 300 else f"answered {status}"
