"""Egress reports, thresholds and the team webhook: the queries, over any Store.

Reports read the daily rollups (kept by proxy.store.rollup), never the pull log. Every
query names the team.

Threshold notifications are rows keyed by (customer, month): the INSERT that creates
one is the whole "once per month" decision, made by the database, so it holds across
restarts and replicas. A replica then takes a short lease on due notifications before
sending (`claim_due`), so two replicas do not deliver the same one at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.store.base import Row, Store, new_id, now_iso

GROUPS = ("day", "month", "customer", "app", "image")

# groupBy -> (the SELECT's key columns, GROUP BY, ORDER BY); fixed strings, never input.
_GROUPINGS: dict[str, tuple[str, str, str]] = {
    "day": ("e.day AS day", "e.day", "e.day"),
    "month": ("substr(e.day, 1, 7) AS month", "substr(e.day, 1, 7)", "substr(e.day, 1, 7)"),
    "customer": (
        "e.customer_id, c.name AS customer_name, e.app_slug",
        "e.customer_id, c.name, e.app_slug",
        "SUM(e.bytes) DESC, e.customer_id",
    ),
    "app": ("e.app_slug", "e.app_slug", "SUM(e.bytes) DESC, e.app_slug"),
    "image": (
        "e.registry_slug, e.image",
        "e.registry_slug, e.image",
        "SUM(e.bytes) DESC, e.registry_slug, e.image",
    ),
}


@dataclass(frozen=True)
class EgressFilter:
    team_id: str
    since: str  # first day, YYYY-MM-DD (inclusive)
    until: str  # last day + 1, YYYY-MM-DD (exclusive)
    customer_id: str | None = None
    app_slug: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        sql = " WHERE e.team_id = ? AND e.day >= ? AND e.day < ?"
        params: list[Any] = [self.team_id, self.since, self.until]
        if self.customer_id is not None:
            sql, params = sql + " AND e.customer_id = ?", [*params, self.customer_id]
        if self.app_slug is not None:
            sql, params = sql + " AND e.app_slug = ?", [*params, self.app_slug]
        return sql, params


def _table(f: EgressFilter, group_by: str) -> str:
    """The coarsest rollup that answers: one customer's rows, else the team's images (days,
    months and apps are sums of either; images is the smaller); customers: _by_customer."""
    return "egress_daily" if f.customer_id is not None else "egress_image_daily"


async def egress(store: Store, f: EgressFilter, group_by: str, limit: int | None = None) -> list[Row]:
    """Bytes, pulls and requests per group, from the rollups. Sums come back as ints
    (PostgreSQL's SUM of a BIGINT is a NUMERIC)."""
    if group_by == "customer" and f.customer_id is None:
        sql, params = _by_customer(f)
    else:
        select, group, order = _GROUPINGS[group_by]
        where, params = f.where()
        join = " LEFT JOIN customers c ON c.id = e.customer_id" if group_by == "customer" else ""
        sql = (
            f"SELECT {select}, SUM(e.bytes) AS bytes, SUM(e.pulls) AS pulls, SUM(e.requests) AS requests"  # noqa: S608
            f" FROM {_table(f, group_by)} e{join}{where} GROUP BY {group} ORDER BY {order}"
        )  # the pieces are the fixed strings of _GROUPINGS, _table and where(); values are parameters
    if limit is not None:
        sql, params = sql + " LIMIT ?", [*params, limit]
    rows = await store.fetchall(sql, params)
    for row in rows:
        for k in ("bytes", "pulls", "requests"):
            row[k] = int(row[k] or 0)
    return rows


def _by_customer(f: EgressFilter) -> tuple[str, list[Any]]:
    """The team's customers: whole months from the monthly rollup, the days before and
    after them from the daily one, so a month is one row per customer, not thirty."""
    first_full = f.since if f.since.endswith("-01") else month_bounds(f.since[:7])[1]
    last_full = f.until[:7] + "-01"  # the first day of until's month: months before it are whole
    app = " AND app_slug = ?" if f.app_slug is not None else ""
    apps = [f.app_slug] if f.app_slug is not None else []
    parts: list[tuple[str, list[Any]]] = []
    if first_full < last_full:
        parts.append(
            (
                "SELECT customer_id, app_slug, bytes, pulls, requests FROM egress_customer_monthly"  # noqa: S608
                " WHERE team_id = ? AND month >= ? AND month < ?" + app,
                [f.team_id, first_full[:7], last_full[:7], *apps],
            )
        )
        edges = [(f.since, first_full), (last_full, f.until)]
    else:
        edges = [(f.since, f.until)]
    for start, end in edges:
        if start < end:
            parts.append(
                (
                    "SELECT customer_id, app_slug, bytes, pulls, requests FROM egress_customer_daily"  # noqa: S608
                    " WHERE team_id = ? AND day >= ? AND day < ?" + app,
                    [f.team_id, start, end, *apps],
                )
            )
    select, group, order = _GROUPINGS["customer"]
    union = " UNION ALL ".join(sql for sql, _ in parts)
    sql = (
        f"SELECT {select}, SUM(e.bytes) AS bytes, SUM(e.pulls) AS pulls, SUM(e.requests) AS requests"  # noqa: S608
        f" FROM ({union}) e LEFT JOIN customers c ON c.id = e.customer_id GROUP BY {group} ORDER BY {order}"
    )
    return sql, [p for _, params in parts for p in params]


async def month_bytes(store: Store, customer_ids: Sequence[str], month: str) -> dict[str, int]:
    """Bytes served this month (YYYY-MM) to each of these customers."""
    if not customer_ids:
        return {}
    marks = ", ".join("?" for _ in customer_ids)
    rows = await store.fetchall(
        f"SELECT customer_id, SUM(bytes) AS bytes FROM egress_customer_monthly WHERE customer_id IN ({marks})"  # noqa: S608
        " AND month = ? GROUP BY customer_id",
        [*customer_ids, month],
    )
    return {r["customer_id"]: int(r["bytes"] or 0) for r in rows}


def month_bounds(month: str) -> tuple[str, str]:
    """'2026-12' -> ('2026-12-01', '2027-01-01')."""
    year, mon = int(month[:4]), int(month[5:7])
    nxt = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return f"{year:04d}-{mon:02d}-01", f"{nxt[0]:04d}-{nxt[1]:02d}-01"


# --- thresholds -----------------------------------------------------------------------


async def set_threshold(store: Store, customer_id: str, threshold: int | None) -> None:
    await store.execute(
        "UPDATE customers SET egress_threshold_bytes = ?, updated_at = ? WHERE id = ?",
        (threshold, now_iso(), customer_id),
    )


async def crossed(store: Store, customer_ids: Sequence[str], month: str) -> list[Row]:
    """Customers among these past their threshold this month with no notification yet."""
    if not customer_ids:
        return []
    marks = ", ".join("?" for _ in customer_ids)
    rows = await store.fetchall(
        "SELECT c.id AS customer_id, c.team_id, a.slug AS app_slug, c.egress_threshold_bytes AS threshold,"  # noqa: S608
        " SUM(e.bytes) AS bytes FROM customers c JOIN apps a ON a.id = c.app_id"
        " JOIN egress_customer_monthly e ON e.customer_id = c.id AND e.month = ?"
        f" WHERE c.id IN ({marks}) AND c.egress_threshold_bytes IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM egress_notifications n WHERE n.customer_id = c.id AND n.month = ?)"
        " GROUP BY c.id, c.team_id, a.slug, c.egress_threshold_bytes"
        " HAVING SUM(e.bytes) >= c.egress_threshold_bytes",
        [month, *customer_ids, month],
    )
    for row in rows:
        row["bytes"], row["threshold"] = int(row["bytes"]), int(row["threshold"])
    return rows


async def record_notification(store: Store, customer_id: str, team_id: str, month: str, body: bytes) -> None:
    """The one notification of this customer and month; a second insert (a restart, another
    replica) does nothing, so what is recorded first is what is sent."""
    now = now_iso()
    await store.execute(
        "INSERT INTO egress_notifications (customer_id, month, team_id, body, state, attempts, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
        " ON CONFLICT (customer_id, month) DO NOTHING",
        (customer_id, month, team_id, body.decode(), now, now, now),
    )


async def notifications_of(store: Store, customer_id: str) -> list[Row]:
    return await store.fetchall(
        "SELECT month, state, attempts, body, created_at, updated_at FROM egress_notifications"
        " WHERE customer_id = ? ORDER BY month DESC",
        (customer_id,),
    )


# --- the team webhook ----------------------------------------------------------------


def webhook_aad(team_id: str) -> str:
    """The associated data a team's webhook secret is sealed with: it opens for that team only."""
    return f"webhook:{team_id}"


async def put_webhook(store: Store, team_id: str, url: str, secret_sealed: str | None) -> None:
    await store.execute(
        "INSERT INTO team_webhooks (team_id, url, secret_sealed, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (team_id) DO UPDATE SET url = excluded.url, secret_sealed = excluded.secret_sealed,"
        " updated_at = excluded.updated_at",
        (team_id, url, secret_sealed, now_iso()),
    )


async def webhook(store: Store, team_id: str) -> Row | None:
    return await store.fetchone(
        "SELECT team_id, url, secret_sealed, updated_at FROM team_webhooks WHERE team_id = ?", (team_id,)
    )


async def delete_webhook(store: Store, team_id: str) -> bool:
    found = await webhook(store, team_id)
    if found is not None:
        await store.execute("DELETE FROM team_webhooks WHERE team_id = ?", (team_id,))
    return found is not None


async def sealed_webhook_secrets(store: Store) -> list[tuple[str, str]]:
    rows = await store.fetchall("SELECT team_id, secret_sealed FROM team_webhooks WHERE secret_sealed IS NOT NULL")
    return [(r["team_id"], r["secret_sealed"]) for r in rows]


async def reseal_webhook_secrets(store: Store, sealed: list[tuple[str, str]]) -> None:
    await store.execute_many(
        ("UPDATE team_webhooks SET secret_sealed = ? WHERE team_id = ?", (s, tid)) for tid, s in sealed
    )


# --- delivery: leases, attempts --------------------------------------------------------


async def claim_due(store: Store, owner: str, lease_seconds: float) -> list[Row]:
    """Take a lease on every due notification no live lease holds; return those taken.

    The UPDATE's condition is evaluated again on a row another replica just leased
    (PostgreSQL re-checks after the row lock), so each row has one holder at a time."""
    now = dt.datetime.now(dt.UTC)
    stamp = _stamp(now)
    until = _stamp(now + dt.timedelta(seconds=lease_seconds))
    await store.execute(
        "UPDATE egress_notifications SET lease_owner = ?, lease_until = ? WHERE state = 'pending'"
        " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)",
        (owner, until, stamp, stamp),
    )
    return await store.fetchall(
        "SELECT customer_id, month, team_id, body, attempts FROM egress_notifications"
        " WHERE state = 'pending' AND lease_owner = ? AND lease_until = ? ORDER BY created_at",
        (owner, until),
    )


async def next_due(store: Store) -> str | None:
    row = await store.fetchone("SELECT MIN(next_attempt_at) AS t FROM egress_notifications WHERE state = 'pending'")
    return row["t"] if row else None


async def attempted(
    store: Store,
    note: Row,
    *,
    url: str,
    attempt: int,
    status: int | None,
    error: str | None,
    ok: bool,
    state: str,
    retry_at: dt.datetime | None,
) -> None:
    """Record one delivery attempt and the notification's new state, in one transaction."""
    now = now_iso()
    event = json.loads(note["body"]).get("event", "")
    await store.execute_many(
        [
            (
                "INSERT INTO webhook_deliveries (id, team_id, event, customer_id, month, attempt, time, url, status,"
                " error, ok) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_id(),
                    note["team_id"],
                    event,
                    note["customer_id"],
                    note["month"],
                    attempt,
                    _stamp(None),
                    url,
                    status,
                    error,
                    int(ok),
                ),
            ),
            (
                "UPDATE egress_notifications SET state = ?, attempts = ?, next_attempt_at = ?, lease_owner = NULL,"
                " lease_until = NULL, updated_at = ? WHERE customer_id = ? AND month = ?",
                (state, attempt, _stamp(retry_at), now, note["customer_id"], note["month"]),
            ),
        ]
    )


async def deliveries(store: Store, team_id: str, limit: int = 100, customer_id: str | None = None) -> list[Row]:
    sql = (
        "SELECT id, event, customer_id, month, attempt, time, url, status, error, ok FROM webhook_deliveries"
        " WHERE team_id = ?"
    )
    params: list[Any] = [team_id]
    if customer_id is not None:
        sql, params = sql + " AND customer_id = ?", [*params, customer_id]
    return await store.fetchall(sql + " ORDER BY time DESC, attempt DESC LIMIT ?", [*params, limit])


def _stamp(t: dt.datetime | None) -> str:
    """Millisecond UTC text, as the pull log's: sorts and compares as text."""
    return (t or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="milliseconds")


# --- the pull log, page by page (CSV export) -----------------------------------------


async def iter_pull_logs(
    store: Store,
    team_id: str,
    *,
    customer_id: str | None = None,
    registry_slug: str | None = None,
    since: str | None = None,
    until: str | None = None,
    page: int = 5000,
) -> AsyncIterator[list[Row]]:
    """Every matching row, oldest first, a page at a time (bounded memory).

    Pages are cut by time, not OFFSET, so rows logged meanwhile shift nothing; a page
    that ends inside a run of equal times drops that run and the next page starts at
    it, fetched whole (rows of one millisecond are few)."""
    base = (
        "SELECT l.time, l.customer_id, c.name AS customer_name, l.app_slug, l.registry_slug, l.action,"
        " l.image, l.reference, l.status, l.success, l.bytes FROM pull_logs l"
        " LEFT JOIN customers c ON c.id = l.customer_id WHERE l.team_id = ?"
    )
    params: list[Any] = [team_id]
    for clause, value in (
        (" AND l.customer_id = ?", customer_id),
        (" AND l.registry_slug = ?", registry_slug),
        (" AND l.time < ?", until or _stamp(None)),  # a fixed end: the export is a snapshot
    ):
        if value is not None:
            base, params = base + clause, [*params, value]
    cursor, inclusive = since, True
    while True:
        sql, p = base, list(params)
        if cursor is not None:
            sql, p = sql + (" AND l.time >= ?" if inclusive else " AND l.time > ?"), [*p, cursor]
        rows = await store.fetchall(sql + " ORDER BY l.time LIMIT ?", [*p, page])
        if len(rows) < page:
            if rows:
                yield rows
            return
        last = rows[-1]["time"]
        head = [r for r in rows if r["time"] != last]
        if head:
            yield head
            cursor, inclusive = last, True
            continue
        # A whole page of one millisecond: take that millisecond entirely, then move past it.
        yield await store.fetchall(base + " AND l.time = ? ORDER BY l.time", [*params, last])
        cursor, inclusive = last, False


# --- the cache hit ratio ---------------------------------------------------------------

# The pull log's hit|miss column (written by the pull-through cache for manifests and blobs).
CACHE_COLUMN = "cache"


async def cache_hits(store: Store, team_id: str, since: str, until: str) -> tuple[int, int] | None:
    """(hits, misses) of the team's manifest and blob pulls in [since, until) (days), or None
    when the pull log has no cache column (a store from before the cache) or nothing counted.
    Reads the pull log (its team and time index), not a rollup: a panel, not a report."""
    try:
        row = await store.fetchone(
            f"SELECT SUM(CASE WHEN {CACHE_COLUMN} = 'hit' THEN 1 ELSE 0 END) AS hits,"  # noqa: S608
            f" SUM(CASE WHEN {CACHE_COLUMN} = 'miss' THEN 1 ELSE 0 END) AS misses"
            " FROM pull_logs WHERE team_id = ? AND time >= ? AND time < ?",
            (team_id, since, until),
        )
    except Exception:  # no such column: "no data", said so on the panel
        return None
    hits, misses = int((row or {}).get("hits") or 0), int((row or {}).get("misses") or 0)
    return (hits, misses) if hits + misses else None
