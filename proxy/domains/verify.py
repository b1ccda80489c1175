"""Proving that a team owns a hostname before the proxy serves it.

Two ways, as ACME does it: a DNS TXT record `_pullgate-challenge.<hostname>`
holding the token shown to the vendor, or the token served by this proxy at
`/.well-known/pullgate-challenge/<token>` and fetched back through the
hostname. The HTTP way proves only that DNS points at the proxy, not who owns
the name, so it counts only when the operator turns on `domains.http_challenge`
(and never for a reserved name: `proxy.domains.names`). The resolver is
configurable (tests run their own DNS server).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver

from proxy.dnsname import HOSTNAME_RE, hostname_problem
from proxy.upstream.connector import EgressDenied, record_refusal

__all__ = [
    "CHALLENGE_LABEL",
    "HOSTNAME_RE",
    "WELL_KNOWN",
    "Verdict",
    "hostname_problem",
    "resolve_address",
    "verify_dns",
    "verify_http",
]

CHALLENGE_LABEL = "_pullgate-challenge"
WELL_KNOWN = "/.well-known/pullgate-challenge/"
TIMEOUT = 5.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def _resolver(nameservers: list[str]) -> dns.asyncresolver.Resolver:
    if not nameservers:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    ips, ports = [], set()
    for ns in nameservers:
        host, _, port = ns.rpartition(":") if ns.count(":") == 1 or ns.startswith("[") else (ns, "", "")
        ips.append((host or ns).strip("[]"))
        ports.add(int(port) if port else 53)
    resolver.nameservers = ips
    resolver.port = ports.pop() if len(ports) == 1 else 53
    return resolver


async def verify_dns(hostname: str, token: str, nameservers: list[str]) -> Verdict:
    name = f"{CHALLENGE_LABEL}.{hostname}"
    try:
        answer = await _resolver(nameservers).resolve(name, "TXT", lifetime=TIMEOUT)
    except dns.resolver.NXDOMAIN:
        return Verdict(False, f"no TXT record at {name}")
    except dns.resolver.NoAnswer:
        return Verdict(False, f"{name} has no TXT record")
    except dns.exception.DNSException as exc:
        return Verdict(False, f"DNS lookup of {name} failed ({type(exc).__name__})")
    values = {b"".join(r.strings).decode(errors="replace") for r in answer}
    if token in values:
        return Verdict(True, "TXT record found")
    return Verdict(False, f"the TXT record at {name} does not hold the challenge token")


async def resolve_address(hostname: str, nameservers: list[str]) -> str | None:
    try:
        answer = await _resolver(nameservers).resolve(hostname, "A", lifetime=TIMEOUT)
    except dns.exception.DNSException:
        return None
    for record in answer:
        return str(record)
    return None


async def verify_http(
    session: aiohttp.ClientSession, hostname: str, token: str, nameservers: list[str], port: int = 80
) -> Verdict:
    """GET http://<hostname>/.well-known/pullgate-challenge/<token>, no redirects."""
    address = await resolve_address(hostname, nameservers)
    if address is None:
        return Verdict(False, f"{hostname} does not resolve")
    ip = ipaddress.ip_address(address)
    url = f"http://{address if ip.version == 4 else f'[{address}]'}:{port}{WELL_KNOWN}{token}"
    try:
        async with asyncio.timeout(TIMEOUT):
            async with session.get(url, headers={"Host": hostname}, allow_redirects=False) as resp:
                body = (await resp.content.read(1024)).decode(errors="replace").strip()
                status = resp.status
    except EgressDenied as exc:
        # The session is the upstream one: its egress policy applies to this check too.
        record_refusal("", exc, f"the HTTP check of {hostname}")
        return Verdict(False, f"{hostname} points at {exc.refusal.reason}, where the proxy may not connect")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Verdict(False, f"fetching the challenge through {hostname} failed ({type(exc).__name__})")
    if status == 200 and body == token:
        return Verdict(True, "challenge served through the hostname")
    return Verdict(False, f"the challenge through {hostname} answered {status}, not the token")
