"""Store scenarios of egress reporting, run on SQLite (tests/unit) and PostgreSQL
(tests/integration/test_postgres_usage.py): the same assertions on both drivers."""

from __future__ import annotations

from typing import Any

from proxy.store import usage
from proxy.store.base import Store


def seal(value: str, cid: str) -> str:
    return f"sealed:{cid}:{value}"


async def two_teams(store: Store) -> dict[str, Any]:
    """Team t1 with app a1 and customers c1, c2; team t2 with app a2 and customer c3."""
    ids: dict[str, Any] = {}
    for team, app, customers in (("t1", "a1", ("c1", "c2")), ("t2", "a2", ("c3",))):
        t = await store.ensure_team(team)
        a = await store.ensure_app(t.id, app, None)
        ids[team], ids[app] = t.id, a
        for c in customers:
            ids[c] = await store.put_customer(
                team_id=t.id, app_id=a.id, name=f"Customer {c}", email=None, license_id=f"lic-{c}-0123456789", seal=seal
            )
    return ids


def row(
    ids: dict[str, Any], customer: str, time: str, size: int, image: str = "vendor/app", action: str = "blob"
) -> tuple[Any, ...]:
    team = "t2" if customer == "c3" else "t1"
    app = "a2" if customer == "c3" else "a1"
    return (time, ids[team], ids[customer], app, "reg", action, image, "sha256:x", 200, 1, size)


async def rollup_sums_batches_and_scopes_teams(store: Store) -> None:
    ids = await two_teams(store)
    await store.insert_pull_logs(
        [
            row(ids, "c1", "2026-11-30T23:59:59.999+00:00", 100),
            row(ids, "c1", "2026-12-01T00:00:00.000+00:00", 10, action="manifest"),
            row(ids, "c1", "2026-12-01T10:00:00.000+00:00", 5, image="vendor/db"),
            row(ids, "c2", "2026-12-02T10:00:00.000+00:00", 7),
            row(ids, "c3", "2026-12-02T10:00:00.000+00:00", 1000),
        ]
    )
    # A second batch adds to the same keys.
    await store.insert_pull_logs([row(ids, "c1", "2026-12-01T11:00:00.000+00:00", 20, action="manifest")])
    f = usage.EgressFilter(ids["t1"], "2026-11-01", "2027-01-01")
    by_day = await usage.egress(store, f, "day")
    assert [(r["day"], r["bytes"], r["pulls"], r["requests"]) for r in by_day] == [
        ("2026-11-30", 100, 0, 1),
        ("2026-12-01", 35, 2, 3),
        ("2026-12-02", 7, 0, 1),
    ]
    by_month = await usage.egress(store, f, "month")
    assert [(r["month"], r["bytes"]) for r in by_month] == [("2026-11", 100), ("2026-12", 42)]
    by_customer = await usage.egress(store, f, "customer")
    assert [(r["customer_name"], r["bytes"]) for r in by_customer] == [("Customer c1", 135), ("Customer c2", 7)]
    # Customers over whole months, part months and both (the monthly and daily rollups together).
    for since, until, want in (
        ("2026-11-30", "2027-01-01", [("Customer c1", 135), ("Customer c2", 7)]),
        ("2026-12-01", "2026-12-02", [("Customer c1", 35)]),
        ("2026-11-01", "2026-12-02", [("Customer c1", 135)]),
        ("2026-12-02", "2027-02-01", [("Customer c2", 7)]),
    ):
        got = await usage.egress(store, usage.EgressFilter(ids["t1"], since, until), "customer")
        assert [(r["customer_name"], r["bytes"]) for r in got] == want, (since, until)
    by_image = await usage.egress(store, f, "image", limit=1)
    assert [(r["image"], r["bytes"]) for r in by_image] == [("vendor/app", 137)]
    by_app = await usage.egress(store, usage.EgressFilter(ids["t2"], "2026-12-01", "2026-12-03"), "app")
    assert [(r["app_slug"], r["bytes"]) for r in by_app] == [("a2", 1000)]  # t2 sees only its own
    one = await usage.egress(store, usage.EgressFilter(ids["t1"], "2026-12-01", "2026-12-02", ids["c1"]), "day")
    assert [(r["day"], r["bytes"]) for r in one] == [("2026-12-01", 35)]
    assert await usage.month_bytes(store, [ids["c1"], ids["c2"]], "2026-12") == {ids["c1"]: 35, ids["c2"]: 7}


async def one_notification_per_customer_and_month(store: Store) -> None:
    ids = await two_teams(store)
    await usage.set_threshold(store, ids["c1"], 50)
    await store.insert_pull_logs([row(ids, "c1", "2026-12-01T00:00:00.000+00:00", 40)])
    assert await usage.crossed(store, [ids["c1"], ids["c2"]], "2026-12") == []
    await store.insert_pull_logs([row(ids, "c1", "2026-12-05T00:00:00.000+00:00", 15)])
    crossed = await usage.crossed(store, [ids["c1"], ids["c2"]], "2026-12")
    assert [(r["customer_id"], r["bytes"], r["threshold"], r["app_slug"]) for r in crossed] == [
        (ids["c1"], 55, 50, "a1")
    ]
    await usage.record_notification(store, ids["c1"], ids["t1"], "2026-12", b'{"n":1}')
    await usage.record_notification(store, ids["c1"], ids["t1"], "2026-12", b'{"n":2}')  # a replica racing
    notes = await usage.notifications_of(store, ids["c1"])
    assert [(n["month"], n["body"]) for n in notes] == [("2026-12", '{"n":1}')]
    assert await usage.crossed(store, [ids["c1"]], "2026-12") == []  # recorded: not again
    # Two replicas claim at once: each due notification goes to one of them.
    first = await usage.claim_due(store, "replica-a", 60)
    second = await usage.claim_due(store, "replica-b", 60)
    assert [n["customer_id"] for n in first] == [ids["c1"]] and second == []


async def pull_log_pages_cover_every_row_once(store: Store) -> None:
    ids = await two_teams(store)
    times = ["2026-12-01T00:00:00.000+00:00"] * 4 + [f"2026-12-01T00:00:0{i}.000+00:00" for i in range(1, 6)]
    await store.insert_pull_logs([row(ids, "c1", t, i) for i, t in enumerate(times)])
    await store.insert_pull_logs([row(ids, "c3", "2026-12-01T00:00:00.000+00:00", 999)])  # another team's
    pages = [p async for p in usage.iter_pull_logs(store, ids["t1"], page=3)]
    got = sorted(r["bytes"] for p in pages for r in p)
    assert got == list(range(9)), pages
    assert all(len(p) <= 4 for p in pages)
    since = [p async for p in usage.iter_pull_logs(store, ids["t1"], since="2026-12-01T00:00:03.000+00:00")]
    assert sorted(r["bytes"] for p in since for r in p) == [6, 7, 8]
