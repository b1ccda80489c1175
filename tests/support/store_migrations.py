"""Checks of a store migration on existing rows, shared by the SQLite (unit) and
PostgreSQL (integration) tests: the store is migrated up to just before the migration,
given rows as an older pullgate wrote them, then migrated to the end."""

from __future__ import annotations

import pytest

from proxy.store import base
from proxy.store.base import Store, now_iso
from proxy.store.schema import MIGRATIONS


async def check_channels_migration(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 'release channels': every existing app gets Stable, Beta and Unstable;
    every existing customer is on its app's Stable, as its default."""
    before = next(i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE app_channels" in m)
    with monkeypatch.context() as m:
        m.setattr(base, "MIGRATIONS", MIGRATIONS[:before])
        await store.migrate()
    now = now_iso()
    await store.execute_many(
        [
            ("INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)", ("t1", "old-team", now)),
            *(
                ("INSERT INTO apps (id, team_id, slug, name, created_at) VALUES (?, ?, ?, ?, ?)", (a, "t1", a, a, now))
                for a in ("app1", "app2")
            ),
            *(
                (
                    "INSERT INTO customers (id, team_id, app_id, name, license_hash, license_sealed, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (c, "t1", app, c, f"hash-{c}", "sealed", now, now),
                )
                for c, app in (("c1", "app1"), ("c2", "app2"))
            ),
        ]
    )
    await store.migrate()
    channels = await store.channels_of_team("t1")
    assert [(c.app_id, c.name, c.slug, c.is_default) for c in channels] == [
        (app, name, slug, slug == "stable")
        for app in ("app1", "app2")
        for name, slug in (("Stable", "stable"), ("Beta", "beta"), ("Unstable", "unstable"))
    ]
    links = await store.customer_channels("t1")
    assert {c: [(ch.id, default) for ch, default in pairs] for c, pairs in links.items()} == {
        "c1": [("app1-stable", True)],
        "c2": [("app2-stable", True)],
    }
    customer = await store.customer_by_id("c1")
    assert customer is not None and customer.custom_id is None
    # A customer given channels keeps exactly those, its default first.
    await store.update_customer(
        "c1",
        name="c1",
        email=None,
        license_type="prod",
        expires_at=None,
        custom_id="crm-1",
        channels=[("app1-beta", False), ("app1-unstable", True)],
    )
    links = await store.customer_channels("t1", "c1")
    assert [(ch.slug, default) for ch, default in links["c1"]] == [("unstable", True), ("beta", False)]
    assert (await store.customer_by_id("c1")).custom_id == "crm-1"  # type: ignore[union-attr]
