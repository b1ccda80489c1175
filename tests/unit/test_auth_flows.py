"""The upstream auth flows driven by hand: no sockets, no real clock.

Each flow (proxy.upstream.flow) yields the requests it wants sent and is sent
back canned responses; the clock is a fake the test moves. What is proven here
is auth logic; that it works against a real registry and token server is
proven by the integration tests (test_providers.py, test_upstream_client.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.secrets import Keyring
from proxy.store.models import Registry
from proxy.upstream.auth import Answer, Authenticator, AuthTarget, handshake
from proxy.upstream.basic import BasicAuth
from proxy.upstream.bearer import BearerAuth, parse_token_response
from proxy.upstream.challenge import Challenge
from proxy.upstream.errors import CredentialsRejected, RealmRefused, UpstreamError
from proxy.upstream.flow import Clock, Flow, Request, Response
from proxy.upstream.providers.base import RegistryCredentials
from proxy.upstream.providers.ecr import authorization_token_flow, token_flow
from proxy.upstream.tokens import TokenCache, usable_until

T = TypeVar("T")
PASSWORD = "pw-canary-123"
CREDS = RegistryCredentials("vendor", PASSWORD)
NO_CREDS = RegistryCredentials(None, None)
REGISTRY = URL("https://registry.vendor.example")
NOW = 1_800_000_000.0


@dataclass
class FakeClock:
    mono: float = 1000.0
    wall: float = NOW

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.mono, wall=lambda: self.wall)


def drive(flow: Flow[T], *responses: Response) -> tuple[T, list[Request]]:
    """Run a flow to its result, answering its requests in order; the requests it sent."""
    sent: list[Request] = []
    replies = iter(responses)
    reply: Any = None
    while True:
        try:
            request = flow.send(reply)  # a generator starts on None
        except StopIteration as done:
            return done.value, sent
        sent.append(request)
        reply = next(replies)


def json_answer(data: Any, status: int = 200) -> Response:
    return Response(status, CIMultiDict({"Content-Type": "application/json"}), json.dumps(data).encode())


def bearer(challenge: str | dict[str, str], creds: RegistryCredentials = CREDS, **kw: Any) -> BearerAuth:
    params = challenge if isinstance(challenge, dict) else {"realm": challenge}
    return BearerAuth(
        "vendor",
        kw.pop("registry", REGISTRY),
        kw.pop("insecure", False),
        Challenge("bearer", params),
        kw.pop("scope", "repository:vendor/app:pull"),
        creds,
        kw.pop("clock", Clock()),
    )


# --- Basic --------------------------------------------------------------------------------------------


def test_basic_sends_nothing_and_gives_the_stored_credentials() -> None:
    tok, sent = drive(BasicAuth("vendor", CREDS, None, 401).flow())
    assert sent == [] and tok.header == "Basic " + base64.b64encode(f"vendor:{PASSWORD}".encode()).decode()
    assert tok.expires_at == float("inf")
    expiring = RegistryCredentials("AWS", "pw", expires_at=1234.0)  # an ECR password
    assert drive(BasicAuth("vendor", expiring, None, 401).flow())[0].expires_at == 1234.0


def test_basic_refuses_no_credentials_and_the_header_just_refused() -> None:
    with pytest.raises(CredentialsRejected):
        drive(BasicAuth("vendor", NO_CREDS, None, 401).flow())
    with pytest.raises(CredentialsRejected) as info:
        drive(BasicAuth("vendor", CREDS, CREDS.basic_header(), 401).flow())
    assert info.value.upstream_status == 401 and PASSWORD not in str(info.value)


# --- Bearer -------------------------------------------------------------------------------------------


def test_bearer_asks_the_realm_for_the_scope_with_basic_credentials() -> None:
    auth = bearer({"realm": "https://auth.vendor.example/token", "service": "registry.vendor.example"})
    tok, (req,) = drive(auth.flow(), json_answer({"token": "tok-1", "expires_in": 300}))
    assert tok.header == "Bearer tok-1"
    url = URL(req.url)
    assert (req.method, url.host, url.path) == ("GET", "auth.vendor.example", "/token")
    assert dict(url.query) == {"service": "registry.vendor.example", "scope": "repository:vendor/app:pull"}
    assert req.headers == {"Authorization": CREDS.basic_header()} and req.body == b""
    assert PASSWORD not in repr(req)  # a request's repr never shows its headers


def test_bearer_anonymous_sends_no_authorization_and_no_empty_service() -> None:
    tok, (req,) = drive(bearer("https://auth.vendor.example/token", NO_CREDS).flow(), json_answer({"token": "anon"}))
    assert tok.header == "Bearer anon" and req.headers == {}
    assert dict(URL(req.url).query) == {"scope": "repository:vendor/app:pull"}


def test_bearer_reads_access_token_too_and_prefers_token() -> None:
    realm = "https://auth.vendor.example/token"
    assert drive(bearer(realm).flow(), json_answer({"access_token": "oauth"}))[0].header == "Bearer oauth"
    both = json_answer({"token": "a", "access_token": "b"})
    assert drive(bearer(realm).flow(), both)[0].header == "Bearer a"


def test_bearer_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    realm = "https://auth.vendor.example/token"
    tok, _ = drive(bearer(realm, clock=clock.clock()).flow(), json_answer({"token": "t", "expires_in": 300}))
    assert tok.expires_at == usable_until(1000.0, 300) == 1240.0
    tok, _ = drive(bearer(realm, clock=clock.clock()).flow(), json_answer({"token": "t"}))
    assert tok.expires_at == usable_until(1000.0, 60)  # the spec's default lifetime
    # issued_at 40 s ago by the wall clock: the token has 40 s less to live.
    issued = dt.datetime.fromtimestamp(NOW - 40, dt.UTC).isoformat().replace("+00:00", "Z")
    answer = json_answer({"token": "t", "expires_in": 300, "issued_at": issued})
    assert drive(bearer(realm, clock=clock.clock()).flow(), answer)[0].expires_at == usable_until(1000.0, 260)
    clock.wall = NOW + 4000  # our wall clock is far off: issued_at is ignored, not trusted
    assert drive(bearer(realm, clock=clock.clock()).flow(), answer)[0].expires_at == usable_until(1000.0, 300)


@pytest.mark.parametrize("status", [401, 403])
def test_bearer_refused_by_the_realm_is_credentials_rejected(status: int) -> None:
    refusal = json_answer({"errors": [{"code": "UNAUTHORIZED", "message": f"bad {PASSWORD}"}]}, status)
    with pytest.raises(CredentialsRejected) as info:
        drive(bearer("https://auth.vendor.example/token").flow(), refusal)
    assert info.value.upstream_status == status and "refused the proxy's credentials" in info.value.message
    assert PASSWORD not in str(info.value)


def test_bearer_realm_failure_names_the_status_not_the_body() -> None:
    with pytest.raises(UpstreamError, match="token service answered 500") as info:
        drive(bearer("https://auth.vendor.example/token").flow(), Response(500, CIMultiDict(), b"SECRETBODY"))
    assert "SECRETBODY" not in str(info.value)


@pytest.mark.parametrize(
    ("realm", "registry", "insecure"),
    [
        ("https://evil.example/token", REGISTRY, False),  # another domain
        ("https://vendor.example.evil.example/token", REGISTRY, False),
        ("http://auth.vendor.example/token", REGISTRY, False),  # plain http for an https registry
        ("https://u:p@auth.vendor.example/token", REGISTRY, False),  # userinfo in the realm
        ("ftp://auth.vendor.example/token", REGISTRY, False),
        ("", REGISTRY, False),  # a Bearer challenge with no realm
        ("/token", REGISTRY, False),  # relative: no host
        ("http://localhost:5000/token", URL("http://127.0.0.1:5000"), True),  # same socket, other name
    ],
)
def test_untrusted_realm_is_refused_before_any_request(realm: str, registry: URL, insecure: bool) -> None:
    flow = bearer(realm, registry=registry, insecure=insecure).flow()
    with pytest.raises(RealmRefused) as info:
        drive(flow)  # no response to give: the flow must stop before yielding a request
    assert PASSWORD not in str(info.value)


def test_trusted_realms() -> None:
    for realm, registry in (
        ("https://auth.docker.io/token", URL("https://registry-1.docker.io")),
        ("https://quay.io/v2/auth", URL("https://quay.io")),
    ):
        assert drive(bearer(realm, registry=registry).flow(), json_answer({"token": "t"}))[0].header == "Bearer t"


def test_parse_token_response_forms() -> None:
    assert parse_token_response(b'{"token":"abc","expires_in":300}', "r", NOW) == ("abc", 300.0)
    assert parse_token_response(b'{"access_token":"xyz"}', "r", NOW) == ("xyz", 60.0)
    assert parse_token_response(b'{"token":"abc","access_token":"xyz"}', "r", NOW)[0] == "abc"
    assert parse_token_response(b'{"token":"abc","expires_in":"300"}', "r", NOW) == ("abc", 60.0)
    assert parse_token_response(b'{"token":"abc","expires_in":-5}', "r", NOW) == ("abc", 60.0)
    assert parse_token_response(b'{"token":"abc","expires_in":true}', "r", NOW) == ("abc", 60.0)


@pytest.mark.parametrize(
    "body",
    [
        b'{"token": "SECRETBODY-1"',
        b'["SECRETBODY-2"]',
        b'"SECRETBODY-3"',
        b'{"tok": "SECRETBODY-4"}',
        b'{"token": "SECRETBODY 5"}',
        b'{"token": "SECRETBODY-6\\n"}',
        b'{"token": 12345, "note": "SECRETBODY-7"}',
        b'{"token": "SECRETBODY-8", "pad": "' + b"x" * (1024 * 1024) + b'"}',
        b"\xff\xfeSECRETBODY-9",
    ],
)
def test_unusable_token_answers_are_refused_without_quoting_them(body: bytes) -> None:
    with pytest.raises(UpstreamError) as exc:
        drive(bearer("https://auth.vendor.example/token").flow(), Response(200, CIMultiDict(), body))
    assert "SECRETBODY" not in str(exc.value) and exc.value.slug == "vendor"


# --- the handshake ------------------------------------------------------------------------------------


def _handshake(cached: str | None, *replies: Response | str) -> list[Request | Answer]:
    flow = handshake(Request("GET", "https://registry.vendor.example/v2/a/manifests/v1", stream=True), cached, "vendor")
    steps: list[Request | Answer] = [next(flow)]
    for reply in replies:
        try:
            steps.append(flow.send(reply))
        except StopIteration:
            break
    return steps


CHALLENGE = CIMultiDict([("WWW-Authenticate", 'Bearer realm="https://auth.vendor.example/token"')])


def test_handshake_sends_the_cached_header_and_stops_on_success() -> None:
    steps = _handshake("Bearer cached", Response(200))
    assert len(steps) == 1 and isinstance(steps[0], Request)
    assert steps[0].headers == {"Authorization": "Bearer cached"} and steps[0].stream


def test_handshake_answers_a_401_once_then_retries() -> None:
    steps = _handshake(None, Response(401, CHALLENGE), "Bearer fresh", Response(200))
    first, ask, retry = steps
    assert isinstance(first, Request) and first.headers == {}
    assert ask == Answer(('Bearer realm="https://auth.vendor.example/token"',), None)
    assert isinstance(retry, Request) and retry.headers == {"Authorization": "Bearer fresh"}


def test_handshake_passes_a_stale_header_and_rejects_a_second_401() -> None:
    with pytest.raises(CredentialsRejected):
        _handshake("Bearer old", Response(401, CHALLENGE), "Bearer new", Response(401, CHALLENGE))
    steps = _handshake("Bearer old", Response(401, CHALLENGE))
    assert steps[1] == Answer(('Bearer realm="https://auth.vendor.example/token"',), "Bearer old")
    # Not a 401: the registry's answer (404, 500...) is the caller's, with no retry here.
    assert len(_handshake(None, Response(404))) == 1


# --- the Authenticator: challenge -> flow -> cache, with a runner that answers by hand -----------------


class Runner:
    """Drives flows like UpstreamClient.run, with an answer function instead of sockets."""

    def __init__(self, answer: Callable[[Request], Response]) -> None:
        self.answer = answer
        self.sent: list[Request] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, flow: Flow[T], slug: str) -> T:
        reply: Any = None
        while True:
            try:
                request = flow.send(reply)  # a generator starts on None
            except StopIteration as done:
                return done.value
            self.sent.append(request)
            if self.gate is not None:
                await self.gate.wait()
            reply = self.answer(request)


TARGET = AuthTarget("reg-1", "vendor", REGISTRY, insecure=False)
BEARER = ['Bearer realm="https://auth.vendor.example/token",service="registry.vendor.example"']


def _issuing() -> Runner:
    count = iter(range(1, 100))
    return Runner(lambda req: json_answer({"token": f"tok-{next(count)}", "expires_in": 300}))


async def test_authenticator_caches_per_scope_and_refetches_a_stale_token() -> None:
    runner, clock = _issuing(), FakeClock()
    auth = Authenticator(TokenCache(clock=lambda: clock.mono), runner, clock.clock())
    scope = "repository:vendor/app:pull"
    assert await auth.answer(TARGET, BEARER, scope, CREDS, None, 401) == "Bearer tok-1"
    assert await auth.answer(TARGET, BEARER, scope, CREDS, None, 401) == "Bearer tok-1"
    assert len(runner.sent) == 1 and auth.cached(TARGET, scope) == "Bearer tok-1"
    assert auth.cached(TARGET, "repository:other:pull") is None  # a token is for its scope only
    assert await auth.answer(TARGET, BEARER, scope, CREDS, "Bearer tok-1", 401) == "Bearer tok-2"
    clock.mono += 240  # usable_until(.., 300): gone after 240 s
    assert auth.cached(TARGET, scope) is None
    assert await auth.answer(TARGET, BEARER, scope, CREDS, None, 401) == "Bearer tok-3"


async def test_authenticator_fetches_once_for_concurrent_waiters() -> None:
    runner = _issuing()
    runner.gate = asyncio.Event()
    auth = Authenticator(TokenCache(), runner)
    waiters = [
        asyncio.create_task(auth.answer(TARGET, BEARER, "repository:a:pull", CREDS, None, 401)) for _ in range(5)
    ]
    await asyncio.sleep(0)
    waiters[0].cancel()  # one client leaves: the fetch the others wait on goes on
    runner.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError) and set(results[1:]) == {"Bearer tok-1"}
    assert len(runner.sent) == 1


async def test_authenticator_basic_challenge_and_malformed_challenges() -> None:
    runner = _issuing()
    auth = Authenticator(TokenCache(), runner)
    header = await auth.answer(TARGET, ['Basic realm="registry"'], "repository:a:pull", CREDS, None, 401)
    assert header == CREDS.basic_header() and auth.cached(TARGET, "repository:any:pull") == header
    with pytest.raises(CredentialsRejected):
        await auth.answer(TARGET, ['Basic realm="registry"'], "repository:a:pull", CREDS, header, 401)
    for malformed in ([], [""], ["Negotiate abc=="], ['="x"'], [",,,"]):
        with pytest.raises(CredentialsRejected):
            await auth.answer(TARGET, malformed, "repository:a:pull", CREDS, None, 401)
    for no_realm in (["Bearer"], ['Bearer service="x"'], ['Bearer realm="https://evil.example/t"']):
        with pytest.raises(RealmRefused):
            await auth.answer(TARGET, no_realm, "repository:a:pull", CREDS, None, 401)
    assert runner.sent == []  # nothing was ever asked of anyone


# --- ECR and STS --------------------------------------------------------------------------------------

AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")


def _ecr_answer(token: str, expires_at: object) -> Response:
    return json_answer({"authorizationData": [{"authorizationToken": token, "expiresAt": expires_at}]})


def test_ecr_request_is_a_sigv4_signed_post() -> None:
    from botocore.credentials import Credentials

    clock = FakeClock()
    flow = authorization_token_flow(
        "ecr",
        "https://api.ecr.eu-west-1.amazonaws.com/",
        "eu-west-1",
        Credentials("AKIAUNIT", "unit-secret-key"),
        clock.clock(),
    )
    token = base64.b64encode(b"AWS:pw").decode()
    tok, (req,) = drive(flow, _ecr_answer(token, NOW + 12 * 3600))
    assert (req.method, req.url, req.body) == ("POST", "https://api.ecr.eu-west-1.amazonaws.com/", b"{}")
    assert req.headers["X-Amz-Target"] == "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
    assert req.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert AMZ_DATE.match(req.headers["X-Amz-Date"])
    day = req.headers["X-Amz-Date"][:8]
    assert req.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential=AKIAUNIT/{day}/eu-west-1/ecr/aws4_request, SignedHeaders="
    )
    assert "unit-secret-key" not in repr(req.headers)
    # 12 hours to live by the wall clock: kept 11 (an hour's margin), from the monotonic start.
    assert tok.header == token and tok.expires_at == 1000.0 + 11 * 3600


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Response(400, CIMultiDict(), b'{"__type":"UnrecognizedClientException"}'), CredentialsRejected),
        (Response(403, CIMultiDict(), b"InvalidSignatureException"), CredentialsRejected),
        (Response(500, CIMultiDict(), b"oops"), UpstreamError),
        (json_answer({"authorizationData": []}), UpstreamError),
        (json_answer({"authorizationData": [{"authorizationToken": 5}]}), UpstreamError),
        (Response(200, CIMultiDict(), b"not json"), UpstreamError),
    ],
)
def test_ecr_refusals_and_malformed_answers(answer: Response, error: type[Exception]) -> None:
    from botocore.credentials import Credentials

    flow = authorization_token_flow(
        "ecr",
        "https://api.ecr.eu-west-1.amazonaws.com/",
        "eu-west-1",
        Credentials("AKIAUNIT", "unit-secret-key"),
        Clock(),
    )
    with pytest.raises(error) as info:
        drive(flow, answer)
    assert "unit-secret-key" not in str(info.value)


def _ecr_registry(ring: Keyring, **options: str) -> Registry:
    return Registry(
        id="e1",
        team_id="t",
        slug="ecr-unit",
        provider="ecr",
        endpoint="123456789012.dkr.ecr.us-west-2.amazonaws.com",
        url="https://123456789012.dkr.ecr.us-west-2.amazonaws.com",
        insecure=False,
        username=None,
        secret_sealed=ring.seal("base-secret", "e1"),
        options={"access_key_id": "AKIABASE", **options},
    )


STS_ANSWER = Response(
    200,
    CIMultiDict({"Content-Type": "text/xml"}),
    (
        b'<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials>'
        b"<AccessKeyId>ASIAASSUMED</AccessKeyId><SecretAccessKey>assumed-secret</SecretAccessKey>"
        b"<SessionToken>session-tok</SessionToken></Credentials></AssumeRoleResult></AssumeRoleResponse>"
    ),
)


def test_ecr_assumes_the_role_through_sts_first() -> None:
    ring = Keyring.generate()
    reg = _ecr_registry(ring, role_arn="arn:aws:iam::123456789012:role/pull")
    token = base64.b64encode(b"AWS:pw").decode()
    tok, (sts, ecr) = drive(token_flow(reg, ring, Clock()), STS_ANSWER, _ecr_answer(token, NOW + 3600))
    assert (sts.method, sts.url) == ("POST", "https://sts.us-west-2.amazonaws.com/")
    form = parse_qs(sts.body.decode())
    assert form["Action"] == ["AssumeRole"] and form["RoleArn"] == ["arn:aws:iam::123456789012:role/pull"]
    assert form["RoleSessionName"] == ["pullgate-ecr-unit"]
    assert "/us-west-2/sts/aws4_request" in sts.headers["Authorization"]
    assert sts.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIABASE/")
    # ECR is asked with the assumed credentials and their session token.
    assert ecr.url == "https://api.ecr.us-west-2.amazonaws.com/"
    assert ecr.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIAASSUMED/")
    assert ecr.headers["X-Amz-Security-Token"] == "session-tok"
    assert tok.header == token
    everything = repr([(r.url, r.headers, r.body) for r in (sts, ecr)])
    assert "base-secret" not in everything and "assumed-secret" not in everything


def test_ecr_without_role_asks_ecr_only_and_sts_refusal_stops_it() -> None:
    ring = Keyring.generate()
    token = base64.b64encode(b"AWS:pw").decode()
    _, sent = drive(token_flow(_ecr_registry(ring), ring, Clock()), _ecr_answer(token, NOW + 3600))
    assert [r.purpose for r in sent] == ["ECR GetAuthorizationToken"]
    reg = _ecr_registry(ring, role_arn="arn:aws:iam::123456789012:role/pull")
    with pytest.raises(CredentialsRejected):
        drive(token_flow(reg, ring, Clock()), Response(403, CIMultiDict(), b"AccessDenied"))
    with pytest.raises(UpstreamError, match="STS AssumeRole answer is malformed"):
        drive(token_flow(reg, ring, Clock()), Response(200, CIMultiDict(), b"<nope/>"))


def test_ecr_needs_a_region() -> None:
    ring = Keyring.generate()
    reg = _ecr_registry(ring)
    reg = Registry(**{**reg.__dict__, "endpoint": "ecr.example"})
    with pytest.raises(UpstreamError, match="no AWS region"):
        drive(token_flow(reg, ring, Clock()))
