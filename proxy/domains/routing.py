"""Which Host the proxy listener answers, and for which team.

The configured `proxy.hosts` serve every team; a verified custom hostname
serves only its own team's apps (the gate refuses other teams' licenses on it).
Any other Host gets a 404 OCI error. A reserved name (`proxy.domains.names`) is
never bound to a team, even when a row for it was verified before the operator
reserved it. The table is reloaded from the store every
few seconds (and at once after a change on this replica), together with the
certificates that TLS picks by SNI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy import metrics
from proxy.context import HOST_TEAM
from proxy.domains.names import Reserved
from proxy.domains.service import key_aad
from proxy.domains.tls import SNIContexts, server_context
from proxy.domains.verify import WELL_KNOWN
from proxy.oci.errors import OCICode, OCIError
from proxy.secrets import Keyring
from proxy.store.base import Store
from proxy.store.models import CustomHostname

log = logging.getLogger("pullgate.domains")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def split_host(host: str) -> tuple[str, str | None]:
    """("name", "port" or None), for names and [v6]:port alike."""
    host = host.lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    return (name, port) if sep and port.isdigit() else (host, None)


class HostTable:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        configured: list[str],
        sni: SNIContexts | None,
        refresh: float,
        reserved: Reserved | None = None,
    ) -> None:
        self.store = store
        self.reserved = reserved if reserved is not None else Reserved(configured)
        self.keyring = keyring
        self.configured = {h.lower() for h in configured}
        self.sni = sni
        self.refresh_seconds = refresh
        self.verified: dict[str, str] = {}  # hostname -> team id
        self.tokens: dict[str, str] = {}  # challenge token -> hostname (pending or failed)
        self._wake = asyncio.Event()
        self._certs: dict[str, str] = {}  # hostname -> cert PEM loaded into SNI

    def changed(self) -> None:
        self._wake.set()

    def admits(self, host: str) -> tuple[bool, str | None]:
        """(served here?, the team it is bound to or None for every team)."""
        name, _port = split_host(host)
        team = self.verified.get(name)
        if team is not None:
            return True, team
        if not self.configured or host.lower() in self.configured or name in self.configured:
            return True, None
        return False, None

    async def refresh(self) -> None:
        rows = [h for h in await self.store.hostnames() if not self.reserved.covers(h.hostname)]
        self.verified = {h.hostname: h.team_id for h in rows if h.status == "verified"}
        self.tokens = {h.token: h.hostname for h in rows if h.status != "verified"}
        now = dt.datetime.now(dt.UTC)
        for h in rows:
            if h.cert_not_after:
                expiry = dt.datetime.fromisoformat(h.cert_not_after)
                metrics.CERT_EXPIRY.labels(h.hostname).set(expiry.timestamp())
                if expiry - now < dt.timedelta(days=21):
                    log.warning("certificate of %s expires %s", h.hostname, h.cert_not_after)
        if self.sni is not None:
            await self._load_certificates([h for h in rows if h.status == "verified" and h.cert_pem and h.key_sealed])

    async def _load_certificates(self, rows: list[CustomHostname]) -> None:
        wanted = {h.hostname: h.cert_pem for h in rows if h.cert_pem}
        if wanted == self._certs:
            return
        contexts = {}
        for h in rows:
            if not h.cert_pem or not h.key_sealed:
                continue  # the caller passes only hostnames with both; this tells the type checker so
            try:
                key = self.keyring.open(h.key_sealed, key_aad(h.hostname))
                contexts[h.hostname] = await asyncio.to_thread(server_context, h.cert_pem, key)
            except Exception as exc:  # one bad certificate must not take the others down
                log.error("certificate of %s not loaded: %s", h.hostname, type(exc).__name__)
        assert self.sni is not None
        self.sni.replace(contexts)
        self._certs = wanted

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # keep the last good table
                log.error("host table refresh failed: %s", type(exc).__name__)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.refresh_seconds)
            except TimeoutError:
                pass

    def middleware(self) -> Middleware:
        @web.middleware
        async def hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
            host = request.headers.get("Host", "")
            if request.path.startswith(WELL_KNOWN):
                return await self._challenge(request, host)
            ok, team = self.admits(host)
            if not ok:
                return OCIError(OCICode.NAME_UNKNOWN, "this host is not served here").response(request.method == "HEAD")
            if team is not None:
                request[HOST_TEAM] = team
            return await handler(request)

        return hosts

    async def _challenge(self, request: web.Request, host: str) -> web.Response:
        token = request.path[len(WELL_KNOWN) :]
        hostname = self.tokens.get(token)
        if hostname is None and 0 < len(token) <= 64:
            # Added a moment ago (or on another replica): ask the store.
            found = await self.store.hostname_by_token(token)
            hostname = found.hostname if found is not None and found.status != "verified" else None
        if hostname is None or split_host(host)[0] != hostname or self.reserved.covers(hostname):
            return web.Response(status=404, text="unknown challenge")
        return web.Response(text=token, content_type="text/plain")
