"""/v2/token: trade a license for a short-lived pull token.

GET with HTTP Basic (Docker, skopeo, KOTS: the password is the license ID, the
username is ignored), or POST of the OAuth2 password form (containerd tries
this first and wants `access_token`). Only `pull` on repositories of the
license's own app is ever granted.

GET answers OCI errors (`proxy.oci.errors`), every 401 with a Basic challenge;
POST answers OAuth2 errors (`proxy.auth.oauth`, RFC 6749 §5.2), also for the
steps it shares with GET (throttling, the store, the scopes, the Host).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web
from multidict import MultiDictProxy

from proxy.auth.anonymous import SUBJECT, throttle
from proxy.auth.credentials import BasicCredentials, parse_authorization
from proxy.auth.gate import Gate
from proxy.auth.oauth import OAuthCode, OAuthError
from proxy.auth.tokens import Access
from proxy.context import HOST_TEAM
from proxy.oci.errors import OCICode, OCIError, PullgateCode
from proxy.oci.grammar import check_name, split_proxy_name
from proxy.oci.names import is_anonymous
from proxy.ratelimit import RateLimiter
from proxy.store.models import Customer

MAX_SCOPES = 16
BASIC_CHALLENGE = 'Basic realm="pullgate"'
Form = MultiDictProxy[str | bytes | bytearray | web.FileField]  # what request.post() reads


def parse_scopes(raw: list[str]) -> list[tuple[str, str, set[str]]]:
    """[(type, name, actions)] from `scope` values (each may hold several, space-separated)."""
    out = []
    for value in raw:
        for scope in value.split():
            kind, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not sep or not sep2 or not name:
                raise OCIError(PullgateCode.SCOPE_INVALID, "malformed scope")
            out.append((kind, name, {a for a in actions.split(",") if a}))
    if len(out) > MAX_SCOPES:
        raise OCIError(PullgateCode.SCOPE_INVALID, "too many scopes")
    return out


def grant(customer: Customer | None, scopes: list[tuple[str, str, set[str]]]) -> list[Access]:
    """Only `pull`, only on the license's own app (and anonymous repositories);
    with no license (customer None), only anonymous repositories.

    As the Docker token spec has it, the answer grants what it can and leaves out what it
    cannot: a scope that is no repository of this proxy, or of another app, is not an error.
    containerd, mirroring `registry.vendor.example/app/api` to this proxy, asks for
    `repository:app/api:pull` beside the scope of our challenge, and must still get its token.
    """
    granted: list[Access] = []
    for kind, name, actions in scopes:
        if kind == "registry" and name == "catalog" and customer is not None:
            granted.append(Access(name="catalog", actions=("*",), type="registry"))  # Harbor, Nexus
            continue
        if kind != "repository" or not ("pull" in actions or "*" in actions):
            continue
        if is_anonymous(name):
            # Whether its registry allows anonymous pulls is decided on the pull itself.
            if grantable(name, None):
                granted.append(Access(name=name, actions=("pull",)))
            continue
        if customer is None:
            raise OCIError(OCICode.UNAUTHORIZED, headers={"WWW-Authenticate": BASIC_CHALLENGE})
        if grantable(name, customer.app_slug):
            granted.append(Access(name=name, actions=("pull",)))
    return granted


def grantable(name: str, app: str | None) -> bool:
    """A repository name this proxy serves: valid, and (for a license's `app`) under `proxy/<app>/`."""
    try:
        check_name(name)
        return app is None or split_proxy_name(name).app == app
    except OCIError:
        return False


class TokenEndpoint:
    def __init__(self, gate: Gate, limiter: RateLimiter | None = None) -> None:
        self.gate = gate
        self.limiter = limiter
        # Told which customer a valid license belongs to (the pull log records token requests).
        self.on_customer: Callable[[web.Request, Customer], None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return await self.get(request)
        if request.method == "POST":
            return await self.post(request)
        # RFC 9110 §15.5.6: a 405 names the methods that are allowed.
        raise OCIError(OCICode.UNSUPPORTED, "the token endpoint takes GET or POST", headers={"Allow": "GET, POST"})

    async def get(self, request: web.Request) -> web.Response:
        try:
            creds = parse_authorization(request.headers.get("Authorization"))
        except OCIError as exc:
            raise OCIError(exc.code, exc.message, headers={"WWW-Authenticate": BASIC_CHALLENGE}) from None
        scopes = request.query.getall("scope", [])
        if creds is None and scopes and self.limiter is not None:
            parsed = parse_scopes(scopes)
            if all(kind == "repository" and is_anonymous(name) for kind, name, _ in parsed):
                # No license: a token for anonymous repositories only, rate-limited per address.
                throttle(self.limiter, self.gate.proxies.client_address(request))
                return self._answer(request, SUBJECT, "", grant(None, parsed))
        if not isinstance(creds, BasicCredentials):
            raise OCIError(
                OCICode.UNAUTHORIZED,
                "send the license ID as the password of HTTP Basic authentication",
                headers={"WWW-Authenticate": BASIC_CHALLENGE},
            )
        customer = await self._customer(request, creds.password)
        if customer is None:
            raise OCIError(OCICode.UNAUTHORIZED, "invalid credentials", headers={"WWW-Authenticate": BASIC_CHALLENGE})
        return self._answer(request, customer.id, customer.app_slug, grant(customer, parse_scopes(scopes)))

    async def post(self, request: web.Request) -> web.Response:
        try:
            return await self._post(request)
        except OAuthError as exc:
            return exc.response()

    async def _post(self, request: web.Request) -> web.Response:
        form = await _read_form(request)
        grant_type = _single(form, "grant_type")
        if grant_type != "password":
            # containerd falls back to GET with Basic when the form is refused.
            raise OAuthError(OAuthCode.UNSUPPORTED_GRANT_TYPE, "only grant_type=password is supported")
        password = _single(form, "password")
        scopes = [s for s in form.getall("scope", []) if isinstance(s, str)]
        with _as_oauth(OAuthCode.INVALID_REQUEST):
            customer = await self._customer(request, password)
        if customer is None:
            raise OAuthError(OAuthCode.INVALID_GRANT, "invalid credentials")
        with _as_oauth(OAuthCode.INVALID_SCOPE):
            access = grant(customer, parse_scopes(scopes))
        with _as_oauth(OAuthCode.INVALID_REQUEST):  # the Host the token is bound to
            return self._answer(request, customer.id, customer.app_slug, access)

    async def _customer(self, request: web.Request, license_id: str) -> Customer | None:
        """The license's customer, or None (counted as a failure); 429 for an address refused too often."""
        self.gate.guard(request)
        customer = await self.gate.license_customer(license_id, request.get(HOST_TEAM))
        if customer is None:
            self.gate.failed(request, "bad_license")
            return None
        if self.on_customer is not None:
            self.on_customer(request, customer)
        return customer

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


async def _read_form(request: web.Request) -> Form:
    try:
        return await request.post()
    except (ValueError, LookupError):  # a multipart body without boundary, an unknown charset
        raise OAuthError(OAuthCode.INVALID_REQUEST, "the body is not a readable form") from None
    except web.HTTPRequestEntityTooLarge:
        raise OAuthError(OAuthCode.INVALID_REQUEST, "the form is too large") from None


def _single(form: Form, key: str) -> str:
    """A required parameter, given once (RFC 6749 §3.2: never repeated)."""
    values = form.getall(key, [])
    if not values or not isinstance(values[0], str) or not values[0]:
        raise OAuthError(OAuthCode.INVALID_REQUEST, f"{key} is required")
    if len(values) > 1:
        raise OAuthError(OAuthCode.INVALID_REQUEST, f"{key} is given more than once")
    return values[0]


@contextmanager
def _as_oauth(otherwise: OAuthCode) -> Iterator[None]:
    """The OCI errors of the steps POST shares with GET, answered as OAuth2 errors:
    throttling and an unreachable store keep their status and Retry-After; anything
    else the step refuses is `otherwise`."""
    try:
        yield
    except OCIError as exc:
        retry = {"Retry-After": exc.headers["Retry-After"]} if "Retry-After" in exc.headers else None
        if exc.code is OCICode.TOOMANYREQUESTS:
            raise OAuthError(OAuthCode.SLOW_DOWN, exc.message, retry) from None
        if exc.status >= 500:
            raise OAuthError(OAuthCode.TEMPORARILY_UNAVAILABLE, exc.message, retry) from None
        raise OAuthError(otherwise, exc.message) from None
