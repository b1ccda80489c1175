"""The daily egress rollup: what a batch of pull-log rows adds to `egress_daily`.

One row per (team, day, customer, app, registry, image) holds the bytes served, the
successful manifest GETs ("pulls") and the requests. The statements run in the same
transaction as the batch's INSERT into pull_logs (Store.insert_pull_logs), so the
rollup never counts a row twice or misses one, across restarts too; rows logged before
the table existed were added by its migration. A month of a busy proxy is then a few
thousand rows to sum, not millions to scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# NULLs never conflict in a unique key, so the key columns hold '' for "none".
UPSERT = (
    "INSERT INTO egress_daily (team_id, day, customer_id, app_slug, registry_slug, image, bytes, pulls, requests)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (team_id, day, customer_id, app_slug, registry_slug, image) DO UPDATE SET"
    " bytes = egress_daily.bytes + excluded.bytes, pulls = egress_daily.pulls + excluded.pulls,"
    " requests = egress_daily.requests + excluded.requests"
)

Key = tuple[str, str, str, str, str, str]


def day_of(time: str) -> str:
    """Stored times are UTC ISO text: the day is its first ten characters."""
    return time[:10]


def rollup(rows: Sequence[Sequence[Any]]) -> dict[Key, list[int]]:
    """Pull-log rows (time, team_id, customer_id, app_slug, registry_slug, action, image,
    reference, status, success, bytes) summed by rollup key: [bytes, pulls, requests]."""
    sums: dict[Key, list[int]] = {}
    for time, team_id, customer_id, app_slug, registry_slug, action, image, _ref, _status, success, size in rows:
        if not customer_id:
            continue  # anonymous pulls belong to no customer
        key = (team_id, day_of(time), customer_id, app_slug or "", registry_slug or "", image or "")
        acc = sums.setdefault(key, [0, 0, 0])
        acc[0] += int(size or 0)
        acc[1] += int(action == "manifest" and bool(success))
        acc[2] += 1
    return sums


def statements(rows: Sequence[Sequence[Any]]) -> list[tuple[str, Sequence[Any]]]:
    """One upsert per key, in key order: replicas writing the same keys at once lock them
    in the same order (PostgreSQL), so they wait for each other instead of deadlocking."""
    return [(UPSERT, (*key, *acc)) for key, acc in sorted(rollup(rows).items())]
