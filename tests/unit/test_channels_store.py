"""Release channels in the SQLite store: the migration of existing apps and customers,
and new apps starting with their channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.store.sqlite import SQLiteStore
from tests.support.store_migrations import check_channels_migration


async def test_existing_apps_and_customers_get_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = SQLiteStore(tmp_path / "old.db")
    with monkeypatch.context() as m:  # opened without migrating: the check migrates step by step
        m.setattr(SQLiteStore, "migrate", _no_migration)
        await store.open()
    try:
        await check_channels_migration(store, monkeypatch)
    finally:
        await store.close()


async def _no_migration(self: SQLiteStore) -> None:
    return None


async def test_new_apps_start_with_channels_and_customers_on_stable(tmp_path: Path):
    store = SQLiteStore(tmp_path / "new.db")
    await store.open()
    try:
        team = await store.ensure_team("t")
        made = await store.create_app(team.id, "made", "Made", [], None)
        boot = await store.ensure_app(team.id, "boot", None)
        for app in (made, boot):
            assert [c.name for c in await store.channels_of_team(team.id, app.id)] == ["Stable", "Beta", "Unstable"]
        cid = await store.put_customer(
            team_id=team.id, app_id=made.id, name="c", email=None, license_id="L" * 32, seal=lambda v, c: "s"
        )
        links = await store.customer_channels(team.id, cid)
        assert [(ch.slug, default) for ch, default in links[cid]] == [("stable", True)]
        # Re-imported (same license) without channels: they stay; moved to another app: its Stable.
        await store.update_customer(
            cid, name="c", email=None, license_type="prod", expires_at=None, channels=[(f"{made.id}-beta", True)]
        )
        await store.put_customer(
            team_id=team.id, app_id=made.id, name="c", email=None, license_id="L" * 32, seal=lambda v, c: "s"
        )
        assert [ch.slug for ch, _ in (await store.customer_channels(team.id, cid))[cid]] == ["beta"]
        await store.put_customer(
            team_id=team.id, app_id=boot.id, name="c", email=None, license_id="L" * 32, seal=lambda v, c: "s"
        )
        assert [ch.id for ch, _ in (await store.customer_channels(team.id, cid))[cid]] == [f"{boot.id}-stable"]
    finally:
        await store.close()
