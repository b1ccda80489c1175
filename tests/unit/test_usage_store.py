"""Egress reporting in the store (SQLite): the rollup kept with each pull-log batch, its
backfill by the migration, reports by day/month/customer/app/image, the one threshold
notification per customer and month, leases, and the pull log read page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from proxy import keyrotation
from proxy.secrets import Keyring
from proxy.store import schema, usage
from proxy.store.sqlite import SQLiteStore
from tests.support import usage_scenarios as scenarios


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "usage.db")
    await s.open()
    yield s
    await s.close()


async def test_rollup_sums_batches_and_scopes_teams(store: SQLiteStore):
    await scenarios.rollup_sums_batches_and_scopes_teams(store)


async def test_one_notification_per_customer_and_month(store: SQLiteStore):
    await scenarios.one_notification_per_customer_and_month(store)


async def test_pull_log_pages_cover_every_row_once(store: SQLiteStore):
    await scenarios.pull_log_pages_cover_every_row_once(store)


async def test_the_migration_backfills_the_rollup_from_the_pull_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A database from before the rollup: its pull-log rows are summed into it on upgrade."""
    index = next(i for i, m in enumerate(schema.MIGRATIONS) if "CREATE TABLE egress_daily" in m)
    old = SQLiteStore(tmp_path / "old.db")
    monkeypatch.setattr("proxy.store.base.MIGRATIONS", schema.MIGRATIONS[:index])
    await old.open()
    ids = await scenarios.two_teams(old)
    rows = [
        scenarios.row(ids, "c1", "2026-12-01T01:00:00.000+00:00", 10, action="manifest"),
        scenarios.row(ids, "c1", "2026-12-01T02:00:00.000+00:00", 32),
        scenarios.row(ids, "c2", "2026-12-02T02:00:00.000+00:00", 5),
    ]
    await old.execute_many(
        ("INSERT INTO pull_logs (time, team_id, customer_id, app_slug, registry_slug, action, image, reference,"
         " status, success, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", r)
        for r in rows
    )  # fmt: skip
    await old.close()
    monkeypatch.setattr("proxy.store.base.MIGRATIONS", schema.MIGRATIONS)
    upgraded = SQLiteStore(tmp_path / "old.db")
    await upgraded.open()
    try:
        f = usage.EgressFilter(ids["t1"], "2026-12-01", "2026-12-31")
        got = [(r["day"], r["bytes"], r["pulls"], r["requests"]) for r in await usage.egress(upgraded, f, "day")]
        assert got == [("2026-12-01", 42, 1, 2), ("2026-12-02", 5, 0, 1)]
        # Opening again migrates nothing twice.
        await upgraded.close()
        await upgraded.open()
        assert [r["bytes"] for r in await usage.egress(upgraded, f, "day")] == [42, 5]
    finally:
        await upgraded.close()


def test_month_bounds():
    assert usage.month_bounds("2026-12") == ("2026-12-01", "2027-01-01")
    assert usage.month_bounds("2026-02") == ("2026-02-01", "2026-03-01")


async def test_key_rotation_reseals_webhook_secrets(store: SQLiteStore, tmp_path: Path):
    ring = Keyring.load_or_create(tmp_path / "keys.yaml")
    team = await store.ensure_team("t1")
    await usage.put_webhook(store, team.id, "https://hooks.example/x", ring.seal("whsec", usage.webhook_aad(team.id)))
    first = ring.current
    kid, count = await keyrotation.rotate(store, ring)
    assert kid != first and count == 1
    row = await usage.webhook(store, team.id)
    assert row is not None and kid in row["secret_sealed"]
    assert ring.open(row["secret_sealed"], usage.webhook_aad(team.id)) == "whsec"
