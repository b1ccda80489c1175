"""Which peers are trusted proxies: whose X-Forwarded-* headers are believed.

The scheme and host the client used (for the token realm and `service`) and the
client's address (for throttles) come from the peer itself unless the peer is
in `proxy.trusted_proxies`, so a client cannot point the realm (and the license
it sends there) elsewhere, nor pick the address it is counted under.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aiohttp import web

from proxy.oci.errors import OCICode, OCIError

_HOST_RE = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


class TrustedProxies:
    """The peers (CIDRs) whose forwarded headers are believed; every other peer speaks for itself."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.trusted = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]

    def _trusted_peer(self, request: web.Request) -> bool:
        if not self.trusted or request.transport is None:
            return False
        peer = request.transport.get_extra_info("peername")
        if not peer:
            return False
        try:
            ip = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def client_address(self, request: web.Request) -> str:
        """The client's address: the peer, or what a trusted proxy says it forwarded for."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        address = str(peer[0]) if peer else "unknown"
        if self._trusted_peer(request):
            forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
            # The rightmost address not added by one of our own proxies is the client.
            for candidate in reversed(forwarded):
                try:
                    ip = ipaddress.ip_address(candidate)
                except ValueError:
                    break
                address = candidate
                if not any(ip in net for net in self.trusted):
                    break
        return address

    def origin(self, request: web.Request) -> tuple[str, str]:
        """The scheme and host the client used: its own, or what a trusted proxy forwarded."""
        scheme = "https" if request.secure else "http"
        host = request.headers.get("Host", "")
        if self._trusted_peer(request):
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
            fwd_host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
            if fwd_host:
                host = fwd_host
        if not host or not _HOST_RE.match(host):
            # 400, not NAME_UNKNOWN's 404: the request is malformed, and clients have always had 400.
            raise OCIError(OCICode.NAME_UNKNOWN, "missing or invalid Host header", status=400)
        return scheme, host.lower()
