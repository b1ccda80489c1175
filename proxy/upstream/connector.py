"""The egress policy applied where aiohttp connects: every address a URL's host
resolves to (or the literal address) is judged before the socket is opened, and
refusals are logged and counted. Idle connections are swept often enough that
none outlives its keep-alive by more than a quarter."""

from __future__ import annotations

import logging
import socket
from typing import Any

import aiohttp

from proxy import metrics
from proxy.egress import EgressPolicy, Refusal

log = logging.getLogger("pullgate.egress")

NON_CANONICAL = Refusal("non-canonical", "a non-canonical form of an IPv4 address", overridable=False)


class EgressDenied(aiohttp.ClientConnectionError):
    """Raised instead of connecting; callers turn it into their own refusal."""

    def __init__(self, refusal: Refusal, address: str, port: int) -> None:
        super().__init__(f"refused by the egress policy: {refusal.rule}")
        self.refusal = refusal
        self.address = address
        self.port = port


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that checks every address it is about to connect to.

    `_resolve_host` is where aiohttp turns a URL's host (a name or a literal
    address) into the addresses it connects to, cached or not; checking its
    result catches both. The socket factory checks each address again just
    before connect, in case a later aiohttp connects by another path."""

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(socket_factory=self._socket, **kwargs)
        self.policy = policy
        keepalive = kwargs.get("keepalive_timeout")
        self._sweep_every = max(0.25, keepalive / 4) if isinstance(keepalive, int | float) else None

    def _cleanup(self) -> None:
        """aiohttp closes idle connections older than the keep-alive in a sweep that runs
        once per keep-alive, so a connection idles up to twice as long (60 s for 30 s).
        Sweep four times as often: closed within 1.25 keep-alives of its last use."""
        super()._cleanup()
        if self._sweep_every is not None and self._cleanup_handle is not None:
            self._cleanup_handle.cancel()
            self._cleanup_handle = self._loop.call_later(self._sweep_every, self._cleanup)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[Any]:
        try:
            hosts = await super()._resolve_host(host, port, traces=traces)
        except aiohttp.InvalidURL:
            # 127.1, 2130706433: legacy numeric forms aiohttp will not dial; a refusal, said so.
            raise EgressDenied(NON_CANONICAL, host, port) from None
        for h in hosts:
            refusal = self.policy.check(h["host"], h["port"])
            if refusal is not None:
                raise EgressDenied(refusal, h["host"], h["port"])
        return hosts

    async def vet(self, host: str, port: int) -> EgressDenied | None:
        """Resolve and judge without connecting (the vendor API's check of a new url)."""
        try:
            await self._resolve_host(host, port)
        except EgressDenied as exc:
            return exc
        except OSError:
            return None  # does not resolve: the connection attempt will say so
        return None

    def _socket(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if self.policy.check(sockaddr[0], sockaddr[1]) is not None:
            raise PermissionError("refused by the egress policy")
        return socket.socket(family=family, type=type_, proto=proto)


def record_refusal(slug: str, denied: EgressDenied | Refusal, where: str) -> None:
    """Every refusal is logged for the operator (with the address, so an egress_allow
    entry can be written) and counted; the client's message never carries the address."""
    refusal = denied.refusal if isinstance(denied, EgressDenied) else denied
    target = f" {denied.address}:{denied.port}" if isinstance(denied, EgressDenied) else ""
    log.warning(
        "egress refused for registry %s (%s%s): %s; rule %s", slug or "-", where, target, refusal.reason, refusal.rule
    )
    metrics.EGRESS_REFUSED.labels(slug or "-", refusal.rule).inc()
