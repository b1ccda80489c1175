"""Every error path of /v2/token, in process: the handler behind the proxy's error middleware,
with a real Gate over a fake store. GET answers OCI errors (every 401 with a Basic challenge);
POST, the OAuth2 form containerd sends, answers RFC 6749 §5.2 errors on every path."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.auth.endpoint import MAX_SCOPES, TokenEndpoint
from proxy.auth.gate import Gate
from proxy.auth.proxies import TrustedProxies
from proxy.auth.tokens import TokenIssuer
from proxy.pull.middleware import oci_errors
from proxy.ratelimit import RateLimiter
from proxy.secrets import Keyring
from proxy.store.base import StoreUnavailable
from proxy.store.models import Customer
from proxy.store.readcache import StoreReadCache

LICENSE = "lic-good-0123456789abcdef"
SCOPE = "repository:proxy/acme/up/repo:pull"
CUSTOMER = Customer(
    id="cust-1",
    team_id="team-1",
    app_id="app-1",
    app_slug="acme",
    name="Customer",
    email=None,
    license_type="prod",
    expires_at=None,
    status="active",
)
FAILURES_ALLOWED = 3
OAUTH2_ERRORS = {
    "invalid_request",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_scope",
    "slow_down",
    "temporarily_unavailable",
}


class FakeStore:
    """The one read the token endpoint makes; `down` makes it unreachable."""

    def __init__(self) -> None:
        self.down = False

    async def customer_by_license(self, license_id: str) -> Customer | None:
        if self.down:
            raise StoreUnavailable()
        return CUSTOMER if license_id == LICENSE else None


@dataclass
class Endpoint:
    client: TestClient
    store: FakeStore

    async def get(self, scope: str | None = SCOPE, auth: str | None = None, **headers: str) -> web.Response:
        params = {"scope": scope} if scope is not None else {}
        if auth is not None:
            headers["Authorization"] = auth
        return await self.client.get("/v2/token", params=params, headers=headers)

    async def post(self, form: dict[str, str] | str | bytes, **headers: str) -> web.Response:
        return await self.client.post("/v2/token", data=form, headers=headers)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    store = FakeStore()
    gate = Gate(
        StoreReadCache(store, ttl=0),  # type: ignore[arg-type]  # a fake with the one method used
        TokenIssuer(Keyring.generate(), ttl_seconds=60),
        TrustedProxies([]),
        RateLimiter(per_minute=0, burst=FAILURES_ALLOWED),
    )
    tokens = TokenEndpoint(gate, limiter=RateLimiter(per_minute=0, burst=1))
    app = web.Application(middlewares=[oci_errors], client_max_size=4096)
    app.router.add_route("*", "/v2/token", tokens.handle)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Endpoint(client, store)
    finally:
        await client.close()


def basic(password: str, user: str = "LICENSE_ID") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def form(**fields: str) -> dict[str, str]:
    return {
        "grant_type": "password",
        "username": "LICENSE_ID",
        "password": LICENSE,
        "scope": SCOPE,
        "service": "proxy.example",
        "client_id": "containerd-client",
        **fields,
    }


async def oci(ans: web.Response) -> tuple[int, str]:
    """(status, code) of an OCI error answer, checking its shape."""
    body = await ans.json()
    assert "application/json" in ans.headers["Content-Type"]
    (error,) = body["errors"]
    assert set(error) == {"code", "message", "detail"} and error["message"]
    return ans.status, error["code"]


async def oauth(ans: web.Response) -> tuple[int, str]:
    """(status, error) of an OAuth2 error answer (RFC 6749 §5.2), checking its shape."""
    body = await ans.json()
    assert "application/json" in ans.headers["Content-Type"]
    assert set(body) == {"error", "error_description"} and body["error_description"], body
    assert body["error"] in OAUTH2_ERRORS
    return ans.status, body["error"]


async def exhaust_failures(ep: Endpoint) -> None:
    for _ in range(FAILURES_ALLOWED):
        assert (await ep.get(auth=basic("lic-wrong-0123456789"))).status == 401


# --- the successes both forms share -------------------------------------------------------


async def test_both_forms_issue_a_token(endpoint: Endpoint):
    got = await endpoint.get(auth=basic(LICENSE))
    assert got.status == 200 and (await got.json())["token"]
    posted = await endpoint.post(form())
    assert posted.status == 200 and (await posted.json())["access_token"]


# --- GET: OCI errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer sometoken", basic("lic-wrong-0123456789"), "Basic !!!notbase64", "Digest abc", "Basic QQ=="],
)
async def test_get_refusals_are_401_unauthorized_with_a_basic_challenge(endpoint: Endpoint, auth: str | None):
    """Malformed Authorization headers were answered 401 without a challenge (RFC 7235 §3.1 wants one)."""
    ans = await endpoint.get(auth=auth)
    assert await oci(ans) == (401, "UNAUTHORIZED")
    assert ans.headers["WWW-Authenticate"] == 'Basic realm="pullgate"'


@pytest.mark.parametrize("scope", ["repository", "repository:proxy/acme/up/repo", " ".join([SCOPE] * (MAX_SCOPES + 1))])
async def test_get_bad_scopes_are_400_scope_invalid(endpoint: Endpoint, scope: str):
    """They were 400 with UNAUTHORIZED, a code whose status is 401."""
    assert await oci(await endpoint.get(scope, auth=basic(LICENSE))) == (400, "SCOPE_INVALID")


BEYOND = [
    "repository:proxy/acme/UP/repo:pull",  # was a 400 NAME_INVALID
    "repository:library/alpine:pull",  # was a 404 NAME_UNKNOWN: containerd's mirror asks this
    "repository:proxy/globex/up/repo:pull",  # was a 403 DENIED
    "repository:proxy/acme/up/repo:push",
]


def granted(token: str) -> list[dict[str, object]]:
    """The `access` claim of one of our tokens (read, not verified: the issuer's tests do that)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["access"]


@pytest.mark.parametrize("scope", BEYOND)
async def test_get_scopes_beyond_the_license_are_left_out(endpoint: Endpoint, scope: str):
    """The Docker token spec: grant what can be granted, never fail for the rest."""
    alone = await endpoint.get(scope, auth=basic(LICENSE))
    assert alone.status == 200 and granted((await alone.json())["token"]) == []
    both = await endpoint.client.get(
        "/v2/token", params=[("scope", SCOPE), ("scope", scope)], headers={"Authorization": basic(LICENSE)}
    )
    assert both.status == 200
    assert granted((await both.json())["token"]) == [
        {"type": "repository", "name": "proxy/acme/up/repo", "actions": ["pull"]}
    ]


@pytest.mark.parametrize("scope", BEYOND)
async def test_post_scopes_beyond_the_license_are_left_out(endpoint: Endpoint, scope: str):
    """containerd's OAuth2 form with its mirror's extra scope, as it sends it (space-separated)."""
    ans = await endpoint.post(form(scope=f"{SCOPE} {scope}"))
    assert ans.status == 200
    assert granted((await ans.json())["access_token"]) == [
        {"type": "repository", "name": "proxy/acme/up/repo", "actions": ["pull"]}
    ]


async def test_get_throttled_after_failures_is_429_with_retry_after(endpoint: Endpoint):
    await exhaust_failures(endpoint)
    ans = await endpoint.get(auth=basic(LICENSE))
    assert await oci(ans) == (429, "TOOMANYREQUESTS")
    assert int(ans.headers["Retry-After"]) >= 1


async def test_get_anonymous_throttle_is_429(endpoint: Endpoint):
    anonymous = "repository:anonymous/public/library/alpine:pull"
    assert (await endpoint.get(anonymous)).status == 200
    ans = await endpoint.get(anonymous)
    assert await oci(ans) == (429, "TOOMANYREQUESTS") and "Retry-After" in ans.headers


async def test_get_store_down_is_503_unavailable(endpoint: Endpoint):
    endpoint.store.down = True
    ans = await endpoint.get(auth=basic(LICENSE))
    assert await oci(ans) == (503, "UNAVAILABLE") and ans.headers["Retry-After"] == "5"


async def test_get_bad_host_is_an_oci_error(endpoint: Endpoint):
    assert await oci(await endpoint.get(auth=basic(LICENSE), Host="bad host!")) == (400, "NAME_UNKNOWN")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD"])
async def test_other_methods_are_405_unsupported_naming_the_allowed_ones(endpoint: Endpoint, method: str):
    """The 405 had no Allow header (RFC 9110 §15.5.6)."""
    ans = await endpoint.client.request(method, "/v2/token")
    assert ans.status == 405 and ans.headers["Allow"] == "GET, POST"
    if method != "HEAD":
        assert await oci(ans) == (405, "UNSUPPORTED")


# --- POST: OAuth2 errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (form(grant_type="refresh_token"), "unsupported_grant_type"),
        ({k: v for k, v in form().items() if k != "grant_type"}, "invalid_request"),  # was unsupported_grant_type
        (form(password=""), "invalid_request"),
        ({k: v for k, v in form().items() if k != "password"}, "invalid_request"),
        ("grant_type=password&grant_type=password&password=" + LICENSE, "invalid_request"),  # RFC 6749 §3.2
        ("grant_type=password&password=a&password=" + LICENSE, "invalid_request"),
        ("a=" + "b" * 8000, "invalid_request"),  # over client_max_size: was a 413 OCI SIZE_INVALID
        (form(password="lic-wrong-0123456789"), "invalid_grant"),  # was 401
        (form(scope="repository"), "invalid_scope"),  # was a 400 OCI UNAUTHORIZED
        (form(scope=" ".join([SCOPE] * (MAX_SCOPES + 1))), "invalid_scope"),
    ],
    ids=[
        "other-grant",
        "no-grant",
        "empty-password",
        "no-password",
        "grant-twice",
        "password-twice",
        "too-large",
        "bad-license",
        "malformed-scope",
        "too-many-scopes",
    ],
)
async def test_post_refusals_are_400_oauth2_errors(endpoint: Endpoint, body: dict[str, str] | str, error: str):
    """400 for each (RFC 6749 §5.2), so containerd falls back to GET with Basic."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if isinstance(body, str) else {}
    assert await oauth(await endpoint.post(body, **headers)) == (400, error)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "application/x-www-form-urlencoded; charset=nope"])
async def test_post_unreadable_form_is_invalid_request(endpoint: Endpoint, content_type: str):
    ans = await endpoint.post(f"grant_type=password&password={LICENSE}".encode(), **{"Content-Type": content_type})
    assert await oauth(ans) == (400, "invalid_request")


async def test_post_throttled_is_429_slow_down_with_retry_after(endpoint: Endpoint):
    """It was a 429 with an OCI body, which an OAuth2 client cannot read."""
    await exhaust_failures(endpoint)
    ans = await endpoint.post(form())
    assert await oauth(ans) == (429, "slow_down")
    assert int(ans.headers["Retry-After"]) >= 1


async def test_post_store_down_is_503_temporarily_unavailable(endpoint: Endpoint):
    endpoint.store.down = True
    ans = await endpoint.post(form())
    assert await oauth(ans) == (503, "temporarily_unavailable") and ans.headers["Retry-After"] == "5"


async def test_post_bad_host_is_invalid_request(endpoint: Endpoint):
    assert await oauth(await endpoint.post(form(), Host="bad host!")) == (400, "invalid_request")


async def test_post_bad_licenses_count_towards_throttling(endpoint: Endpoint):
    for _ in range(FAILURES_ALLOWED):
        assert await oauth(await endpoint.post(form(password="lic-wrong-0123456789"))) == (400, "invalid_grant")
    assert await oci(await endpoint.get(auth=basic(LICENSE))) == (429, "TOOMANYREQUESTS")


async def test_oauth2_errors_are_not_cached(endpoint: Endpoint):
    ans = await endpoint.post(form(grant_type="refresh_token"))
    assert ans.headers["Cache-Control"] == "no-store"
