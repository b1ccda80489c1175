"""Egress reports from the daily rollup: how long a month of a busy proxy takes to answer.

Usage: .venv/bin/python bench/egress_bench.py [--customers 2000] [--images 10] [--days 31]
                                              [--dsn postgresql://...] [--repeat 20]
See bench/README.md for what it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from proxy.store import open_store, usage
from proxy.store.base import Store
from proxy.store.rollup import statements

MONTH = "2026-11"
CHUNK = 5000


def seal(value: str, cid: str) -> str:
    return f"bench:{cid}"


async def load(store: Store, customers: int, images: int, days: int) -> tuple[str, list[str]]:
    """A team with `customers` customers, each pulling `images` images every day of the month."""
    team = await store.ensure_team("bench")
    app = await store.ensure_app(team.id, "bench-app", None)
    ids = []
    for i in range(customers):
        ids.append(
            await store.put_customer(
                team_id=team.id, app_id=app.id, name=f"Customer {i:05d}", email=None,
                license_id=f"bench-license-{i:08d}-xxxxxxxx", seal=seal,
            )
        )  # fmt: skip
    rng = random.Random(13)
    # One pull-log-shaped row per rollup key (a day of one customer's image), through the
    # same upserts a batch makes; the pull log itself is not needed to read the rollups.
    rows: list[tuple[Any, ...]] = []
    for day in range(1, days + 1):
        for cid in ids:
            for img in range(images):
                rows.append(
                    (f"{MONTH}-{day:02d}T12:00:00.000+00:00", team.id, cid, "bench-app", "up",
                     rng.choice(("manifest", "blob")), f"vendor/image-{img:02d}", "x", 200, 1,
                     rng.randrange(1, 2_000_000_000))
                )  # fmt: skip
    for start in range(0, len(rows), CHUNK):
        await store.execute_many(statements(rows[start : start + CHUNK]))
    return team.id, ids


async def timed(what: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    await what()  # warm the caches once
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await what()
        runs.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(runs), 2), "max_ms": round(max(runs), 2)}


async def batch_write_ms(
    store: Store, team_id: str, ids: list[str], repeat: int, with_rollup: bool = True
) -> dict[str, float]:
    """What a 500-row pull-log batch costs to write, with its rollup upserts (one transaction)
    or, for comparison, the pull-log INSERTs alone."""
    rng = random.Random(7)

    def batch() -> list[tuple[Any, ...]]:
        return [
            (f"{MONTH}-30T12:00:00.000+00:00", team_id, rng.choice(ids), "bench-app", "up", "blob",
             f"vendor/image-{rng.randrange(10):02d}", "sha256:x", 200, 1, rng.randrange(1, 10**8))
            for _ in range(500)
        ]  # fmt: skip

    if with_rollup:
        return await timed(lambda: store.insert_pull_logs(batch()), repeat)
    return await timed(lambda: store.execute_many((PULL_LOG_INSERT, r) for r in batch()), repeat)


PULL_LOG_INSERT = (
    "INSERT INTO pull_logs (time, team_id, customer_id, app_slug, registry_slug, action, image,"
    " reference, status, success, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--dsn", help="a PostgreSQL DSN (an empty database); default: SQLite in a temp dir")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp:
        url = args.dsn or f"sqlite:///{tmp}/bench.db"
        store = await open_store(url, Path(tmp))
        try:
            t0 = time.perf_counter()
            team_id, ids = await load(store, args.customers, args.images, args.days)
            load_s = time.perf_counter() - t0
            start, end = usage.month_bounds(MONTH)
            team = usage.EgressFilter(team_id, start, end)
            one = usage.EgressFilter(team_id, start, end, customer_id=ids[len(ids) // 2])
            figures: dict[str, Any] = {
                "driver": "postgresql" if args.dsn else "sqlite",
                "rollup_rows": args.customers * args.images * args.days,
                "load_seconds": round(load_s, 1),
                "queries": {
                    "team_month_by_day": await timed(lambda: usage.egress(store, team, "day"), args.repeat),
                    "team_month_by_month": await timed(lambda: usage.egress(store, team, "month"), args.repeat),
                    "team_month_top_customers": await timed(
                        lambda: usage.egress(store, team, "customer", limit=10), args.repeat
                    ),
                    "team_month_by_image": await timed(lambda: usage.egress(store, team, "image"), args.repeat),
                    "customer_month_by_day": await timed(lambda: usage.egress(store, one, "day"), args.repeat),
                    "threshold_check_500_customers": await timed(
                        lambda: usage.crossed(store, ids[:500], MONTH), args.repeat
                    ),
                },
                "pull_log_batch_500_with_rollup": await batch_write_ms(store, team_id, ids, args.repeat),
                "pull_log_batch_500_alone": await batch_write_ms(store, team_id, ids, args.repeat, False),
            }
        finally:
            await store.close()
    width = max(len(k) for k in figures["queries"])
    print(f"{figures['driver']}: {figures['rollup_rows']} rollup rows loaded in {figures['load_seconds']} s")
    for name, f in figures["queries"].items():
        print(f"  {name:<{width}}  median {f['median_ms']:8.2f} ms   max {f['max_ms']:8.2f} ms")
    b = figures["pull_log_batch_500_with_rollup"]
    print(f"  {'pull-log batch of 500 + rollup':<{width}}  median {b['median_ms']:8.2f} ms   max {b['max_ms']:8.2f} ms")
    b = figures["pull_log_batch_500_alone"]
    print(f"  {'pull-log batch of 500 alone':<{width}}  median {b['median_ms']:8.2f} ms   max {b['max_ms']:8.2f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
