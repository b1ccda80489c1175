"""The pull-through cache's index in the store (tables of migration 5), so it survives a
restart and, with PostgreSQL, can be shared by replicas. Times are epoch milliseconds.

The cache keeps its index in memory and writes here behind it (proxy.cache.persist):
a hit never waits on the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from proxy.store.base import Row, Store

Statement = tuple[str, Sequence[Any]]


def ms(seconds: float) -> int:
    return int(seconds * 1000)


async def load(store: Store) -> tuple[list[Row], list[Row], list[Row]]:
    """(entries, bindings, tags)."""
    entries = await store.fetchall(
        "SELECT digest, size, media_type, last_access FROM cache_entries ORDER BY last_access"
    )
    bindings = await store.fetchall("SELECT registry_id, repository, digest FROM cache_bindings")
    tags = await store.fetchall(
        "SELECT registry_id, repository, tag, accept, digest, media_type, checked_at FROM cache_tags"
    )
    return entries, bindings, tags


def put_entry(digest: str, size: int, media_type: str | None, last_access: float) -> Statement:
    return (
        "INSERT INTO cache_entries (digest, size, media_type, last_access) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (digest) DO UPDATE SET size = excluded.size, media_type = excluded.media_type,"
        " last_access = excluded.last_access",
        (digest, size, media_type, ms(last_access)),
    )


def touch(digest: str, last_access: float) -> Statement:
    return ("UPDATE cache_entries SET last_access = ? WHERE digest = ?", (ms(last_access), digest))


def bind(registry_id: str, repository: str, digest: str, now: float) -> Statement:
    return (
        "INSERT INTO cache_bindings (registry_id, repository, digest, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (registry_id, repository, digest) DO NOTHING",
        (registry_id, repository, digest, ms(now)),
    )


def unbind(registry_id: str, repository: str, digest: str) -> Statement:
    return (
        "DELETE FROM cache_bindings WHERE registry_id = ? AND repository = ? AND digest = ?",
        (registry_id, repository, digest),
    )


def put_tag(key: tuple[str, str, str, str], digest: str, media_type: str, checked_at: float) -> Statement:
    registry_id, repository, tag, accept = key
    return (
        "INSERT INTO cache_tags (registry_id, repository, tag, accept, digest, media_type, checked_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (registry_id, repository, tag, accept) DO UPDATE SET"
        " digest = excluded.digest, media_type = excluded.media_type, checked_at = excluded.checked_at",
        (registry_id, repository, tag, accept, digest, media_type, ms(checked_at)),
    )


def drop_tag(key: tuple[str, str, str, str]) -> Statement:
    return (
        "DELETE FROM cache_tags WHERE registry_id = ? AND repository = ? AND tag = ? AND accept = ?",
        key,
    )


def forget(digest: str) -> Iterable[Statement]:
    """A digest evicted or purged: its entry, bindings, and the tags that point at it."""
    yield ("DELETE FROM cache_entries WHERE digest = ?", (digest,))
    yield ("DELETE FROM cache_bindings WHERE digest = ?", (digest,))
    yield ("DELETE FROM cache_tags WHERE digest = ?", (digest,))


async def run(store: Store, statements: Iterable[Statement]) -> None:
    batch = list(statements)
    if batch:
        await store.execute_many(batch)


# --- what another replica (or worker) holds: looked up on a miss of the memory index ---
async def entry(store: Store, digest: str) -> tuple[Row | None, list[Row]]:
    """The digest's entry and its bindings, as the store has them."""
    row = await store.fetchone("SELECT digest, size, media_type FROM cache_entries WHERE digest = ?", (digest,))
    if row is None:
        return None, []
    bindings = await store.fetchall("SELECT registry_id, repository FROM cache_bindings WHERE digest = ?", (digest,))
    return row, bindings


async def is_bound(store: Store, registry_id: str, repository: str, digest: str) -> bool:
    row = await store.fetchone(
        "SELECT 1 AS ok FROM cache_bindings WHERE registry_id = ? AND repository = ? AND digest = ?",
        (registry_id, repository, digest),
    )
    return row is not None


async def tag(store: Store, key: tuple[str, str, str, str]) -> Row | None:
    return await store.fetchone(
        "SELECT digest, media_type, checked_at FROM cache_tags"
        " WHERE registry_id = ? AND repository = ? AND tag = ? AND accept = ?",
        key,
    )


# --- the size limit across every process sharing the store (Cache.evict_shared) ---
async def stored_total(store: Store) -> int:
    row = await store.fetchone("SELECT COALESCE(SUM(size), 0) AS total FROM cache_entries")
    return int(row["total"]) if row is not None else 0


async def least_recent(store: Store, limit: int) -> list[Row]:
    """(digest, size) of the least recently used entries, by the last use written behind."""
    return await store.fetchall("SELECT digest, size FROM cache_entries ORDER BY last_access, digest LIMIT ?", (limit,))


# --- a purge across every process sharing the store (Cache.purge) ---
PURGED_COLUMNS = {
    "cache_bindings": "registry_id, repository, digest",
    "cache_tags": "registry_id, repository, tag, accept",
}


async def of_registries(
    store: Store, table: str, registry_ids: set[str], repository: str | None = None, digest: str | None = None
) -> list[Row]:
    """The stored bindings or tags (`table`) of these registries, narrowed by repository and
    digest."""
    columns = PURGED_COLUMNS[table]  # a fixed name: never built from input
    if not registry_ids:
        return []
    ids = sorted(registry_ids)
    where = f"registry_id IN ({', '.join('?' for _ in ids)})"
    params: list[Any] = list(ids)
    for column, value in (("repository", repository), ("digest", digest)):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    return await store.fetchall(f"SELECT {columns} FROM {table} WHERE {where}", params)  # noqa: S608 - placeholders only


async def bound_digests(store: Store, digests: Sequence[str], per_query: int = 500) -> set[str]:
    """Which of `digests` any binding in the store still holds (a few queries, not one each)."""
    out: set[str] = set()
    for i in range(0, len(digests), per_query):
        part = list(digests[i : i + per_query])
        marks = ", ".join("?" for _ in part)
        rows = await store.fetchall(f"SELECT DISTINCT digest FROM cache_bindings WHERE digest IN ({marks})", part)  # noqa: S608 - placeholders only
        out |= {row["digest"] for row in rows}
    return out
