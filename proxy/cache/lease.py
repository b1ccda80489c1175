"""Fill leases: one fetch per digest across every replica and worker sharing the store.

Single flight (proxy.cache.flight) makes one upstream GET per digest within a process; the
lease extends that to the cluster. The process that takes a digest's lease fetches it into
the shared backend; one that finds the lease held by another fetches it for its own
clients only (streamed through its local spool, never stored): at most one upstream GET
per process, and the object is stored once.

The lease lives in the store (proxy.store.fills), renewed every `renew_every` while the
fetch runs, so a holder that dies frees the digest `ttl` seconds later. When the store
cannot be asked, the fetch goes ahead as if the lease were taken: a duplicate fill of
content-addressed bytes is harmless, a pull that fails because of it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable

from proxy.store import fills
from proxy.store.base import Store

log = logging.getLogger("pullgate.cache")

TTL = 30.0
RENEW_EVERY = 10.0


def holder_name() -> str:
    """Names this process in the leases it holds (host, pid, and a nonce for pid reuse)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class FillLeases:
    def __init__(
        self,
        store: Store,
        holder: str | None = None,
        ttl: float = TTL,
        renew_every: float = RENEW_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.holder = holder or holder_name()
        self.ttl = ttl
        self.renew_every = renew_every
        self.clock = clock

    def _ms(self, seconds: float) -> int:
        return int(seconds * 1000)

    @contextlib.asynccontextmanager
    async def claim(self, digest: str) -> AsyncIterator[bool]:
        """True inside when this process is to fill `digest` for everyone (the lease is held,
        renewed, and released on exit); False when another holds it."""
        try:
            held = await fills.take(self.store, digest, self.holder, self._ms(self.clock()), self._ms(self.ttl))
        except Exception as exc:
            log.warning("cache: fill lease for %s not available (%s); filling without it", digest, type(exc).__name__)
            yield True
            return
        if not held:
            yield False
            return
        renewer = asyncio.create_task(self._renew(digest), name=f"cache-lease-{digest[:19]}")
        try:
            yield True
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await fills.release(self.store, digest, self.holder)
            except Exception as exc:  # it expires by itself
                log.warning("cache: could not release the fill lease of %s (%s)", digest, type(exc).__name__)

    async def _renew(self, digest: str) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await fills.renew(self.store, digest, self.holder, self._ms(self.clock() + self.ttl))
            except Exception as exc:
                log.warning("cache: could not renew the fill lease of %s (%s)", digest, type(exc).__name__)
