"""Egress per customer, thresholds and the team webhook: what the API, the portal and
the CLI (through the API) call, team-scoped like VendorService, on which it builds.

Egress is the bytes the proxy served, summed from the daily rollup (proxy.store.rollup):
days are UTC, `since` inclusive, `until` exclusive.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.admin.service import VendorService, pull_log_json
from proxy.apierrors import Invalid, NotFound
from proxy.egress import carries_credentials, is_ip_address, refused_destination, url_target
from proxy.store import usage
from proxy.store.base import Row, Store, parse_time
from proxy.store.models import Team

MAX_DELIVERIES = 500
MAX_RANGE_DAYS = 3660
WEBHOOK_SECRET_MAX = 1024


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def this_month() -> str:
    return today().isoformat()[:7]


@dataclass(frozen=True)
class EgressQuery:
    since: str
    until: str
    group_by: str
    customer_id: str | None
    app_slug: str | None


@dataclass
class UsageService:
    vendor: VendorService

    @property
    def store(self) -> Store:
        return self.vendor.store

    # --- egress reports -------------------------------------------------------------
    async def egress_query(self, team: Team, query: Mapping[str, str]) -> EgressQuery:
        problems = [f"{k}: unknown query parameter" for k in sorted(set(query) - EGRESS_PARAMS)]
        since = _day(query.get("since"), "since", problems)
        until = _day(query.get("until"), "until", problems)
        group_by = query.get("groupBy") or "day"
        if group_by not in usage.GROUPS:
            problems.append(f"groupBy: one of {', '.join(usage.GROUPS)}")
        _format(query, problems)
        first = since or today().replace(day=1)
        end = until or today() + dt.timedelta(days=1)
        if not problems and first >= end:
            problems.append("until: must be after since")
        elif not problems and (end - first).days > MAX_RANGE_DAYS:
            problems.append(f"since: the range is at most {MAX_RANGE_DAYS} days")
        if problems:
            raise Invalid(problems)
        customer_id = (await self.vendor.customer_obj(team, query["customer"])).id if query.get("customer") else None
        app_slug = (await self.vendor.app(team, query["app"])).slug if query.get("app") else None
        return EgressQuery(first.isoformat(), end.isoformat(), group_by, customer_id, app_slug)

    async def egress_rows(self, team: Team, q: EgressQuery, limit: int | None = None) -> list[Row]:
        f = usage.EgressFilter(team.id, q.since, q.until, q.customer_id, q.app_slug)
        return await usage.egress(self.store, f, q.group_by, limit)

    async def egress(self, team: Team, query: Mapping[str, str]) -> dict[str, Any]:
        q = await self.egress_query(team, query)
        rows = [egress_json(r, q.group_by) for r in await self.egress_rows(team, q)]
        totals = {k: sum(r[k] for r in rows) for k in ("bytes", "pulls", "requests")}
        return {
            "since": q.since,
            "until": q.until,
            "groupBy": q.group_by,
            "customer": q.customer_id,
            "app": q.app_slug,
            "totals": totals,
            "rows": rows,
        }

    # --- thresholds -------------------------------------------------------------------
    async def threshold_state(self, team: Team, customer_id: str) -> dict[str, Any]:
        """This month's egress against the customer's threshold, and its notifications."""
        c = await self.vendor.customer_obj(team, customer_id)
        month = this_month()
        spent = (await usage.month_bytes(self.store, [c.id], month)).get(c.id, 0)
        notes = await usage.notifications_of(self.store, c.id)
        current = next((n for n in notes if n["month"] == month), None)
        return {
            "month": month,
            "bytes": spent,
            "thresholdBytes": c.egress_threshold_bytes,
            "reached": c.egress_threshold_bytes is not None and spent >= c.egress_threshold_bytes,
            "percent": round(100 * spent / c.egress_threshold_bytes, 1) if c.egress_threshold_bytes else None,
            "notification": (
                {"state": current["state"], "attempts": current["attempts"], "at": current["created_at"]}
                if current
                else None
            ),
        }

    # --- the team webhook -------------------------------------------------------------
    async def webhook(self, team: Team) -> dict[str, Any] | None:
        row = await usage.webhook(self.store, team.id)
        if row is None:
            return None
        return {"url": row["url"], "secretSet": row["secret_sealed"] is not None, "updatedAt": row["updated_at"]}

    async def put_webhook(self, team: Team, body: Mapping[str, Any]) -> dict[str, Any]:
        problems = [f"{k}: unknown field" for k in sorted(set(body) - {"url", "secret"})]
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 2048:
            problems.append("url: required, an http:// or https:// URL (at most 2048 characters)")
            url = None
        else:
            try:
                if carries_credentials(url):
                    problems.append("url: must not carry credentials (user:password@); give a secret instead")
            except ValueError:
                problems.append("url: not a valid URL")
            if url_target(url) is None:
                problems.append("url: must name a host")
        secret = body.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) > WEBHOOK_SECRET_MAX):
            problems.append(f"secret: a string (at most {WEBHOOK_SECRET_MAX} characters), or null for none")
        current = await usage.webhook(self.store, team.id)
        if "secret" not in body and current is not None and current["secret_sealed"] and url != current["url"]:
            # As with registries: a stored secret signs only for the URL it was given with.
            problems.append("secret: changing the url requires giving the secret again (or null for none)")
        if problems:
            raise Invalid(problems)
        assert isinstance(url, str)  # checked above
        await self._check_egress(url)
        if "secret" not in body and current is not None:
            sealed = current["secret_sealed"]
        else:
            sealed = self.vendor.keyring.seal(secret, usage.webhook_aad(team.id)) if secret else None
        await usage.put_webhook(self.store, team.id, url, sealed)
        out = await self.webhook(team)
        assert out is not None
        return out

    async def _check_egress(self, url: str) -> None:
        """The webhook is an outbound connection like any other: the same policy, judged on
        what the name resolves to now; a refusal names the rule."""
        target = url_target(url)
        denied = await self.vendor.upstream.refusal_for(url)
        if target is not None and denied is not None:
            raise Invalid([refused_destination("url", target[0], denied.refusal, is_ip_address(target[0]))])

    async def delete_webhook(self, team: Team) -> None:
        if not await usage.delete_webhook(self.store, team.id):
            raise NotFound("no webhook is set")

    async def deliveries(self, team: Team, query: Mapping[str, str]) -> list[dict[str, Any]]:
        problems = [f"{k}: unknown query parameter" for k in sorted(set(query) - {"customer", "limit"})]
        limit = 100
        if "limit" in query:
            raw = query["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_DELIVERIES:
                problems.append(f"limit: a whole number from 1 to {MAX_DELIVERIES}")
            else:
                limit = int(raw)
        if problems:
            raise Invalid(problems)
        customer_id = (await self.vendor.customer_obj(team, query["customer"])).id if query.get("customer") else None
        rows = await usage.deliveries(self.store, team.id, limit, customer_id)
        return [delivery_json(r) for r in rows]

    # --- the pull log as pages (CSV) ----------------------------------------------------
    async def pull_log_pages(self, team: Team, query: Mapping[str, str]) -> AsyncIterator[list[dict[str, Any]]]:
        """Every matching row, oldest first; `limit` (when given) bounds the count."""
        rest = {k: v for k, v in query.items() if k != "format"}
        problems: list[str] = []
        _format(query, problems)
        if problems:
            raise Invalid(problems)
        f = await self.vendor.pull_log_filter(team, rest, max_limit=None)
        return self._pages(team, f)

    async def _pages(self, team: Team, f: Any) -> AsyncIterator[list[dict[str, Any]]]:
        left = f.limit
        async for page in usage.iter_pull_logs(
            self.store,
            team.id,
            customer_id=f.customer_id,
            registry_slug=f.registry_slug,
            since=f.since,
            until=f.until,
        ):
            if left is not None:
                page, left = page[:left], left - len(page[:left])
            if page:
                yield [pull_log_json(r) for r in page]
            if left is not None and left <= 0:
                return


EGRESS_PARAMS = frozenset({"customer", "app", "since", "until", "groupBy", "format"})


def _format(query: Mapping[str, str], problems: list[str]) -> None:
    if query.get("format", "json") not in ("json", "csv"):
        problems.append("format: json or csv")


def _day(raw: str | None, key: str, problems: list[str]) -> dt.date | None:
    """A day (YYYY-MM-DD) or an ISO time (its UTC day)."""
    if not raw:
        return None
    try:
        if len(raw) == 10:
            return dt.date.fromisoformat(raw)
        t = parse_time(raw)
    except ValueError:
        t = None
    if t is None:
        problems.append(f"{key}: a day (2026-01-31) or an ISO 8601 time")
        return None
    return t.astimezone(dt.UTC).date()


def egress_json(row: Mapping[str, Any], group_by: str) -> dict[str, Any]:
    keys: dict[str, Any]
    if group_by == "day":
        keys = {"day": row["day"]}
    elif group_by == "month":
        keys = {"month": row["month"]}
    elif group_by == "customer":
        keys = {"customerId": row["customer_id"], "customerName": row["customer_name"], "appSlug": row["app_slug"]}
    elif group_by == "app":
        keys = {"appSlug": row["app_slug"]}
    else:
        keys = {"registry": row["registry_slug"] or None, "image": row["image"] or None}
    return {**keys, "bytes": row["bytes"], "pulls": row["pulls"], "requests": row["requests"]}


def delivery_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event": row["event"],
        "customerId": row["customer_id"],
        "month": row["month"],
        "attempt": row["attempt"],
        "time": row["time"],
        "url": row["url"],
        "status": row["status"],
        "error": row["error"],
        "ok": bool(row["ok"]),
    }
