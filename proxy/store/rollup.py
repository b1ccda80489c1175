"""The daily egress rollups: what a batch of pull-log rows adds to them.

Four tables, each summing the bytes served, the successful manifest GETs ("pulls")
and the requests per UTC day (or month), at the grain its reports read, so a report sums a few
thousand rows, never a month of the pull log:

- `egress_daily`: per customer, app, registry and image (one customer's reports);
- `egress_customer_daily`: per customer and app (the team's customers over days);
- `egress_customer_monthly`: the same per month (over whole months; thresholds);
- `egress_image_daily`: per app, registry and image (the team's days, months, apps, images).

The upserts run in the same transaction as the batch's INSERT into pull_logs
(Store.insert_pull_logs), so the rollups never count a row twice or miss one, across
restarts too; rows logged before the tables existed were added by their migration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SUMS = "bytes, pulls, requests"


def _upsert(table: str, keys: tuple[str, ...]) -> str:
    cols = ", ".join(keys)
    marks = ", ".join("?" for _ in range(len(keys) + 3))
    # Table and column names are the fixed ones of TABLES, never input.
    return (
        f"INSERT INTO {table} ({cols}, {SUMS}) VALUES ({marks}) ON CONFLICT ({cols}) DO UPDATE SET"  # noqa: S608
        f" bytes = {table}.bytes + excluded.bytes, pulls = {table}.pulls + excluded.pulls,"
        f" requests = {table}.requests + excluded.requests"
    )


# (table, its key columns): the key is also the table's primary key, in this order.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("egress_daily", ("customer_id", "day", "app_slug", "registry_slug", "image", "team_id")),
    ("egress_customer_daily", ("team_id", "day", "customer_id", "app_slug")),
    ("egress_customer_monthly", ("team_id", "month", "customer_id", "app_slug")),
    ("egress_image_daily", ("team_id", "day", "app_slug", "registry_slug", "image")),
)
UPSERTS = {table: _upsert(table, keys) for table, keys in TABLES}

Key = tuple[str, ...]


def day_of(time: str) -> str:
    """Stored times are UTC ISO text: the day is its first ten characters."""
    return time[:10]


def rollup(rows: Sequence[Sequence[Any]]) -> dict[str, dict[Key, list[int]]]:
    """Pull-log rows (time, team_id, customer_id, app_slug, registry_slug, action, image,
    reference, status, success, bytes) summed per table and key: [bytes, pulls, requests].
    NULLs never conflict in a unique key, so the key columns hold '' for "none"."""
    sums: dict[str, dict[Key, list[int]]] = {table: {} for table, _ in TABLES}
    for r in rows:
        # By position: columns added after `bytes` (the cache's hit|miss) are not summed here.
        time, team_id, customer_id, app_slug, registry_slug, action, image = r[:7]
        success, size = r[9], r[10]
        if not customer_id:
            continue  # anonymous pulls belong to no customer
        v = {
            "team_id": team_id,
            "day": day_of(time),
            "month": time[:7],
            "customer_id": customer_id,
            "app_slug": app_slug or "",
            "registry_slug": registry_slug or "",
            "image": image or "",
        }
        add = (int(size or 0), int(action == "manifest" and bool(success)), 1)
        for table, keys in TABLES:
            acc = sums[table].setdefault(tuple(v[k] for k in keys), [0, 0, 0])
            for i, n in enumerate(add):
                acc[i] += n
    return sums


def statements(rows: Sequence[Sequence[Any]]) -> list[tuple[str, Sequence[Any]]]:
    """One upsert per table and key, in key order: replicas writing the same keys at once
    lock them in the same order (PostgreSQL), so they wait for each other, never deadlock."""
    return [
        (UPSERTS[table], (*key, *acc)) for table, by_key in rollup(rows).items() for key, acc in sorted(by_key.items())
    ]
