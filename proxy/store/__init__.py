"""State: teams, apps, registries, customers. SQLite is the embedded default; PostgreSQL for several replicas.

The hot path reads through proxy.store.readcache, a cache of a few seconds over the store."""

from __future__ import annotations

from pathlib import Path

from proxy.settings import sqlite_path
from proxy.store.base import Store


async def open_store(url: str, base_dir: Path) -> Store:
    if url.startswith("sqlite:"):
        from proxy.store.sqlite import SQLiteStore  # lazy: only the driver in use is loaded

        store: Store = SQLiteStore(sqlite_path(url, base_dir))
    else:
        from proxy.store.postgres import PostgresStore  # lazy: asyncpg only for PostgreSQL

        store = PostgresStore(url)
    await store.open()
    return store


__all__ = ["Store", "open_store"]
