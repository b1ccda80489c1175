"""Who may pull what: every /v2 request of a customer passes through here.

A request carries a proxy-issued Bearer token or the license itself as HTTP
Basic. Either way the license's current state is read (through a cache of a
few seconds), so a revocation stops pulls even while a token is still live.
"""

from __future__ import annotations

import datetime as dt
import logging
import math

from aiohttp import web

from proxy import metrics
from proxy.auth.credentials import BasicCredentials, parse_authorization
from proxy.auth.proxies import TrustedProxies
from proxy.auth.tokens import InvalidToken, TokenClaims, TokenIssuer
from proxy.context import HOST_TEAM
from proxy.oci.errors import OCICode, OCIError
from proxy.oci.grammar import ProxyName
from proxy.ratelimit import RateLimiter
from proxy.store.models import Customer
from proxy.store.readcache import StoreReadCache

log = logging.getLogger("pullgate.auth")


class Gate:
    def __init__(
        self,
        read_cache: StoreReadCache,
        issuer: TokenIssuer,
        proxies: TrustedProxies,
        failures: RateLimiter | None = None,
    ) -> None:
        self.read_cache = read_cache
        self.issuer = issuer
        self.proxies = proxies
        # Guessing licenses is slowed per client address (see guard/failed).
        self.failures = failures

    def guard(self, request: web.Request) -> None:
        """429 for an address that has been refused too often lately."""
        if self.failures is None:
            return
        wait = self.failures.wait(self.proxies.client_address(request))
        if wait is not None:
            metrics.AUTH_FAILURES.labels("throttled").inc()
            retry = "3600" if math.isinf(wait) else str(max(1, math.ceil(wait)))
            message = "too many failed authentications from this address"
            raise OCIError(OCICode.TOOMANYREQUESTS, message, headers={"Retry-After": retry})

    def bearer_claims(self, request: web.Request, token: str, name: str | None) -> TokenClaims:
        """A valid token of ours for this host, granting `name` (when given)."""
        _, host = self.proxies.origin(request)
        try:
            claims = self.issuer.verify(token, audience=host)
        except InvalidToken:
            self.failed(request, "bad_token")
            raise self.unauthorized(request, "invalid or expired token", name, "invalid_token") from None
        if name is not None and not claims.allows(name):
            if claims.app and name.startswith("proxy/") and name.split("/")[1] != claims.app:
                # Another app's repository: its token left the scope out; the answer is the
                # DENIED a license of the wrong app gets with Basic, not a retry-able 401.
                metrics.AUTH_FAILURES.labels("denied").inc()
                raise OCIError(OCICode.DENIED, "requested access to the resource is denied")
            metrics.AUTH_FAILURES.labels("scope").inc()
            raise self.unauthorized(request, "token does not grant this repository", name, "insufficient_scope")
        return claims

    def failed(self, request: web.Request, reason: str) -> None:
        metrics.AUTH_FAILURES.labels(reason).inc()
        if self.failures is not None:
            self.failures.take(self.proxies.client_address(request))

    def challenge(self, request: web.Request, scope: str | None = None, error: str | None = None) -> str:
        scheme, host = self.proxies.origin(request)
        parts = [f'realm="{scheme}://{host}/v2/token"', f'service="{host}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def unauthorized(
        self, request: web.Request, message: str, name: ProxyName | str | None, error: str | None = None
    ) -> OCIError:
        if isinstance(name, ProxyName):
            name = name.full
        scope = (name if name.startswith("registry:") else f"repository:{name}:pull") if name else None
        return OCIError(
            OCICode.UNAUTHORIZED,
            message,
            headers={"WWW-Authenticate": self.challenge(request, scope, error)},
        )

    async def license_customer(self, license_id: str, host_team: str | None = None) -> Customer | None:
        """The customer for a license that may pull now (on this host), or None."""
        customer = await self.read_cache.customer_by_license(license_id)
        if customer is not None and host_team is not None and customer.team_id != host_team:
            customer = None  # another team's hostname: this license does not exist here
        return customer if _usable(customer) else None

    async def authorize(self, request: web.Request, name: ProxyName | None) -> Customer:
        """The customer behind this request, allowed to pull `name` (if given)."""
        try:
            creds = parse_authorization(request.headers.get("Authorization"))
        except OCIError:
            self.failed(request, "malformed")
            raise
        if creds is None:
            metrics.AUTH_FAILURES.labels("missing").inc()
            raise self.unauthorized(request, "authentication required", name)
        self.guard(request)
        host_team = request.get(HOST_TEAM)
        if isinstance(creds, BasicCredentials):
            customer = await self.license_customer(creds.password, host_team)
            if customer is None:
                self.failed(request, "bad_license")
                raise self.unauthorized(request, "invalid credentials", name)
        else:
            claims = self.bearer_claims(request, creds.token, name.full if name else None)
            found = await self.read_cache.customer_by_id(claims.subject)
            if found is not None and host_team is not None and found.team_id != host_team:
                found = None
            if not _usable(found):
                metrics.AUTH_FAILURES.labels("bad_license").inc()
                raise self.unauthorized(request, "license is no longer valid", name)
            assert found is not None
            customer = found
        if name is not None and customer.app_slug != name.app:
            metrics.LICENSE_CHECKS.labels("wrong_app").inc()
            metrics.AUTH_FAILURES.labels("denied").inc()
            raise OCIError(OCICode.DENIED, "requested access to the resource is denied")
        return customer


def _usable(customer: Customer | None) -> bool:
    """Count the outcome of a license check; True when it may pull now."""
    if customer is None:
        metrics.LICENSE_CHECKS.labels("unknown").inc()
        return False
    refusal = customer.refusal(dt.datetime.now(dt.UTC))
    metrics.LICENSE_CHECKS.labels(refusal or "ok").inc()
    return refusal is None


async def authorize_anonymous(gate: Gate, request: web.Request, name: str) -> Customer | None:
    """An anonymous repository: an anonymous token for it, or any valid license."""
    creds = parse_authorization(request.headers.get("Authorization"))
    if creds is None:
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise gate.unauthorized(request, "authentication required (an anonymous token will do)", name)
    gate.guard(request)
    if isinstance(creds, BasicCredentials):
        customer = await gate.license_customer(creds.password, request.get(HOST_TEAM))
        if customer is None:
            gate.failed(request, "bad_license")
            raise gate.unauthorized(request, "invalid credentials", name)
        return customer
    gate.bearer_claims(request, creds.token, name)
    return None


async def authorize_catalog(gate: Gate, request: web.Request) -> Customer:
    """The catalog lists one app's repositories: a license, or a token granting registry:catalog:*."""
    scope = "registry:catalog:*"
    creds = parse_authorization(request.headers.get("Authorization"))
    if isinstance(creds, BasicCredentials):
        return await gate.authorize(request, None)
    if creds is None:
        raise gate.unauthorized(request, "authentication required", scope)
    _, host = gate.proxies.origin(request)
    try:
        claims = gate.issuer.verify(creds.token, audience=host)
    except InvalidToken:
        raise gate.unauthorized(request, "invalid or expired token", scope, "invalid_token") from None
    if not claims.allows_catalog():
        raise gate.unauthorized(request, "token does not grant the catalog", scope, "insufficient_scope")
    customer = await gate.read_cache.customer_by_id(claims.subject)
    if not _usable(customer) or (request.get(HOST_TEAM) not in (None, customer.team_id if customer else None)):
        raise gate.unauthorized(request, "license is no longer valid", scope)
    assert customer is not None
    return customer
