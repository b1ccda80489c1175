"""Fill leases (table cache_fills): which replica fetches a digest into the shared cache.

A lease is a row per digest naming its holder, valid until `expires_at` (epoch ms). Taking
one is a single upsert that only overwrites a row whose time has passed, then a read of who
holds it; so of several replicas asking at once exactly one sees its own name. The holder
renews while its fetch runs and deletes the row when done; a holder that died stops
renewing, and its row is taken over once it expires.
"""

from __future__ import annotations

from proxy.store.base import Store


async def take(store: Store, digest: str, holder: str, now_ms: int, ttl_ms: int) -> bool:
    """True when `holder` holds the lease on `digest` now (taken, or already its own)."""
    await store.execute(
        "INSERT INTO cache_fills (digest, holder, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (digest) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
        " WHERE cache_fills.expires_at < ?",
        (digest, holder, now_ms + ttl_ms, now_ms),
    )
    row = await store.fetchone("SELECT holder FROM cache_fills WHERE digest = ?", (digest,))
    return row is not None and row["holder"] == holder


async def renew(store: Store, digest: str, holder: str, expires_ms: int) -> None:
    await store.execute(
        "UPDATE cache_fills SET expires_at = ? WHERE digest = ? AND holder = ?", (expires_ms, digest, holder)
    )


async def release(store: Store, digest: str, holder: str) -> None:
    await store.execute("DELETE FROM cache_fills WHERE digest = ? AND holder = ?", (digest, holder))
