"""/v2/token: trade a license for a short-lived pull token.

GET with HTTP Basic (Docker, skopeo, KOTS: the password is the license ID, the
username is ignored), or POST of the OAuth2 password form (containerd tries
this first and wants `access_token`). Only `pull` on repositories of the
license's own app is ever granted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from aiohttp import web

from proxy.auth.anonymous import SUBJECT, throttle
from proxy.auth.credentials import BasicCredentials, parse_authorization
from proxy.auth.gate import Gate
from proxy.auth.tokens import Access
from proxy.context import HOST_TEAM
from proxy.oci.errors import OCIError
from proxy.oci.grammar import check_name, split_proxy_name
from proxy.oci.names import is_anonymous
from proxy.ratelimit import RateLimiter
from proxy.store.models import Customer

MAX_SCOPES = 16
BASIC_CHALLENGE = 'Basic realm="pullgate"'


def parse_scopes(raw: list[str]) -> list[tuple[str, str, set[str]]]:
    """[(type, name, actions)] from `scope` values (each may hold several, space-separated)."""
    out = []
    for value in raw:
        for scope in value.split():
            kind, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not sep or not sep2 or not name:
                raise OCIError("UNAUTHORIZED", "malformed scope", status=400)
            out.append((kind, name, {a for a in actions.split(",") if a}))
    if len(out) > MAX_SCOPES:
        raise OCIError("UNAUTHORIZED", "too many scopes", status=400)
    return out


def grant(customer: Customer | None, scopes: list[tuple[str, str, set[str]]]) -> list[Access]:
    """Only `pull`, only on the license's own app (and anonymous repositories);
    with no license (customer None), only anonymous repositories."""
    granted: list[Access] = []
    for kind, name, actions in scopes:
        if kind == "registry" and name == "catalog" and customer is not None:
            granted.append(Access(name="catalog", actions=("*",), type="registry"))  # Harbor, Nexus
            continue
        if kind != "repository":
            continue
        check_name(name)
        if is_anonymous(name):
            # Whether its registry allows anonymous pulls is decided on the pull itself.
            if "pull" in actions or "*" in actions:
                granted.append(Access(name=name, actions=("pull",)))
            continue
        if customer is None:
            raise OCIError("UNAUTHORIZED", "authentication required", headers={"WWW-Authenticate": BASIC_CHALLENGE})
        pname = split_proxy_name(name)
        if pname.app != customer.app_slug:
            raise OCIError("DENIED", "requested access to the resource is denied")
        if "pull" in actions or "*" in actions:
            granted.append(Access(name=name, actions=("pull",)))
    return granted


class TokenEndpoint:
    def __init__(self, gate: Gate, limiter: RateLimiter | None = None) -> None:
        self.gate = gate
        self.limiter = limiter
        # Told which customer a valid license belongs to (the pull log records token requests).
        self.on_customer: Callable[[web.Request, Customer], None] | None = None

    async def get(self, request: web.Request) -> web.Response:
        creds = parse_authorization(request.headers.get("Authorization"))
        scopes = request.query.getall("scope", [])
        if creds is None and scopes and self.limiter is not None:
            parsed = parse_scopes(scopes)
            if all(kind == "repository" and is_anonymous(name) for kind, name, _ in parsed):
                # No license: a token for anonymous repositories only, rate-limited per address.
                throttle(self.limiter, self.gate.proxies.client_address(request))
                return self._answer(request, SUBJECT, "", grant(None, parsed))
        if not isinstance(creds, BasicCredentials):
            raise OCIError(
                "UNAUTHORIZED",
                "send the license ID as the password of HTTP Basic authentication",
                headers={"WWW-Authenticate": BASIC_CHALLENGE},
            )
        return await self._issue(request, creds.password, scopes, oauth=False)

    async def post(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except (ValueError, LookupError):  # a multipart body without boundary, an unknown charset
            return web.json_response(
                {"error": "invalid_request", "error_description": "the body is not a readable form"}, status=400
            )
        grant_type = form.get("grant_type")
        if grant_type != "password":
            # containerd falls back to GET with Basic when the form is refused.
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "only grant_type=password is supported"},
                status=400,
            )
        password = form.get("password")
        if not isinstance(password, str) or not password:
            return web.json_response(
                {"error": "invalid_request", "error_description": "password is required"}, status=400
            )
        scopes = [s for s in form.getall("scope", []) if isinstance(s, str)]
        return await self._issue(request, password, scopes, oauth=True)

    async def _issue(self, request: web.Request, license_id: str, raw_scopes: list[str], oauth: bool) -> web.Response:
        self.gate.guard(request)
        customer = await self.gate.license_customer(license_id, request.get(HOST_TEAM))
        if customer is None:
            self.gate.failed(request, "bad_license")
            if oauth:
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "invalid credentials"}, status=401
                )
            raise OCIError("UNAUTHORIZED", "invalid credentials", headers={"WWW-Authenticate": BASIC_CHALLENGE})
        if self.on_customer is not None:
            self.on_customer(request, customer)
        return self._answer(request, customer.id, customer.app_slug, grant(customer, parse_scopes(raw_scopes)))

    def _answer(self, request: web.Request, subject: str, app: str, access: list[Access]) -> web.Response:
        _, host = self.gate.proxies.origin(request)
        token, issued_at, expires_in = self.gate.issuer.issue(subject, app, host, access)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": dt.datetime.fromtimestamp(issued_at, dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})
