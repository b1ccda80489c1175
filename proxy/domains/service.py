"""Team-scoped operations on custom hostnames, for the vendor API, CLI and portal.

A hostname is added pending with a challenge token; `verify` tries the DNS TXT
record, then (only when the operator turned on `domains.http_challenge`) the
HTTP challenge; only a verified hostname is served. The operator's reserved
names (`proxy.domains.names.Reserved`) are refused at every step. One
verified hostname per team may be the default (the portal's pull references
use it). A certificate for it can be uploaded; its key is sealed like the
registry secrets, with "hostname:<name>" as associated data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from proxy.apierrors import Conflict, Invalid, NotFound
from proxy.dnsname import hostname_problem
from proxy.domains.names import Reserved
from proxy.domains.tls import CertificateError, inspect
from proxy.domains.verify import CHALLENGE_LABEL, WELL_KNOWN, Verdict, verify_dns, verify_http
from proxy.secrets import Keyring
from proxy.settings import DomainsSection
from proxy.store.base import Conflict as StoreConflict
from proxy.store.base import Store
from proxy.store.models import CustomHostname, Team

EXPIRING_DAYS = 21


def key_aad(hostname: str) -> str:
    return f"hostname:{hostname}"


DNS_ONLY = "ownership is proven by the DNS TXT record only (the HTTP challenge is off on this server)"


def hostname_json(h: CustomHostname, http_challenge: bool = False) -> dict[str, Any]:
    """`httpUrl` is null when the HTTP challenge does not count for this name (off, or reserved)."""
    cert = None
    if h.cert_not_after:
        not_after = dt.datetime.fromisoformat(h.cert_not_after)
        days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        cert = {"notAfter": h.cert_not_after, "expiresInDays": int(days), "expiringSoon": days < EXPIRING_DAYS}
    return {
        "hostname": h.hostname,
        "status": h.status,
        "reason": h.reason,
        "isDefault": h.is_default,
        "verification": {
            "dnsRecord": f"{CHALLENGE_LABEL}.{h.hostname}",
            "dnsType": "TXT",
            "dnsValue": h.token,
            "httpUrl": f"http://{h.hostname}{WELL_KNOWN}{h.token}" if http_challenge else None,
        },
        "certificate": cert,
        "createdAt": h.created_at,
    }


@dataclass
class HostnameService:
    store: Store
    keyring: Keyring
    cfg: DomainsSection
    session: Callable[[], aiohttp.ClientSession]
    # Called after any change, so this replica's host table reloads at once.
    changed: Callable[[], None] = lambda: None
    # The operator's names (proxy.hosts, domains.reserved): no team may claim them.
    reserved: Reserved = field(default_factory=Reserved)

    def _json(self, h: CustomHostname) -> dict[str, Any]:
        if self.reserved.covers(h.hostname):
            # Stored before the operator reserved it: shown as what it is, never served.
            h = replace(h, status="failed", reason=self.reserved.reason(h.hostname), is_default=False)
            return hostname_json(h, False)
        return hostname_json(h, self.cfg.http_challenge)

    async def _changed(self) -> None:
        self.changed()
        await self.store.notify("hostname")  # the other replicas' host tables

    async def list(self, team: Team) -> list[dict[str, Any]]:
        return [self._json(h) for h in await self.store.hostnames(team.id)]

    async def get(self, team: Team, hostname: str) -> CustomHostname:
        h = await self.store.hostname(hostname.lower())
        if h is None or h.team_id != team.id:
            raise NotFound(f"no hostname {hostname!r}")
        return h

    async def add(self, team: Team, body: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [f"{k}: unknown field" for k in sorted(set(body) - {"hostname"})]
        hostname = body.get("hostname")
        problem = hostname_problem(hostname) if isinstance(hostname, str) else "hostname: required"
        if problem or unknown:
            raise Invalid([*unknown, *([problem] if problem else [])])
        assert isinstance(hostname, str)
        if self.reserved.covers(hostname):
            raise Conflict(self.reserved.reason(hostname))
        try:
            h = await self.store.add_hostname(team.id, hostname, secrets.token_urlsafe(24))
        except StoreConflict as exc:
            raise Conflict(str(exc)) from None
        await self._changed()
        return self._json(h)

    async def remove(self, team: Team, hostname: str) -> None:
        if not await self.store.delete_hostname(team.id, hostname.lower()):
            raise NotFound(f"no hostname {hostname!r}")
        await self._changed()

    async def verify(self, team: Team, hostname: str) -> dict[str, Any]:
        h = await self.get(team, hostname)
        if self.reserved.covers(h.hostname):
            # Stored before the operator reserved it: cut off, whatever proof there is.
            await self.store.set_hostname_status(h.hostname, "failed", self.reserved.reason(h.hostname))
            await self._changed()
            return self._json(await self.get(team, hostname))
        verdict = await self._prove(h)
        status = "verified" if verdict.ok else ("failed" if h.status != "verified" else "verified")
        # A verified hostname stays verified when a later re-check fails: say so, do not cut it off.
        await self.store.set_hostname_status(h.hostname, status, None if verdict.ok else verdict.reason)
        await self._changed()
        return self._json(await self.get(team, hostname))

    async def _prove(self, h: CustomHostname) -> Verdict:
        """The DNS TXT record; the HTTP challenge only when the operator turned it on."""
        verdict = await verify_dns(h.hostname, h.token, self.cfg.resolver)
        if verdict.ok:
            return verdict
        if not self.cfg.http_challenge:
            return Verdict(False, f"{verdict.reason}; {DNS_ONLY}")
        via_http = await verify_http(self.session(), h.hostname, h.token, self.cfg.resolver, self.cfg.http_verify_port)
        return via_http if via_http.ok else Verdict(False, f"{verdict.reason}; {via_http.reason}")

    async def set_default(self, team: Team, hostname: str) -> dict[str, Any]:
        h = await self.get(team, hostname)
        if self.reserved.covers(h.hostname):
            raise Conflict(self.reserved.reason(h.hostname))
        if h.status != "verified":
            raise Invalid([f"hostname: {h.hostname} is {h.status}; verify it first"])
        await self.store.set_default_hostname(team.id, h.hostname)
        await self._changed()
        return self._json(await self.get(team, hostname))

    async def set_certificate(self, team: Team, hostname: str, body: Mapping[str, Any]) -> dict[str, Any]:
        h = await self.get(team, hostname)
        problems = [f"{k}: unknown field" for k in sorted(set(body) - {"certificate", "key"})]
        cert, key = body.get("certificate"), body.get("key")
        if not isinstance(cert, str) or "BEGIN CERTIFICATE" not in cert:
            problems.append("certificate: required, PEM")
        if not isinstance(key, str) or "PRIVATE KEY" not in key:
            problems.append("key: required, PEM (unencrypted)")
        if problems:
            raise Invalid(problems)
        assert isinstance(cert, str) and isinstance(key, str)
        try:
            info = await asyncio.to_thread(inspect, cert, key, h.hostname)
        except CertificateError as exc:
            raise Invalid([str(exc)]) from None
        if info.not_after <= dt.datetime.now(dt.UTC):
            raise Invalid(["certificate: has expired"])
        sealed = self.keyring.seal(key, key_aad(h.hostname))
        await self.store.set_hostname_certificate(h.hostname, cert, sealed, info.not_after.isoformat())
        await self._changed()
        return self._json(await self.get(team, hostname))

    async def default_hostname(self, team: Team) -> str | None:
        for h in await self.store.hostnames(team.id, status="verified"):
            if h.is_default and not self.reserved.covers(h.hostname):
                return h.hostname
        return None
