"""UpstreamClient against small loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from proxy.config import UpstreamSection
from proxy.secrets import Keyring
from proxy.store.models import Registry
from proxy.upstream.client import UpstreamClient
from proxy.upstream.errors import CredentialsRejected, UpstreamTimeout, UpstreamUnavailable

PASSWORD = "canary-unit-pw-4f1c"


@dataclass
class Seen:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (host:port, path, auth)


async def _serve(handler: Callable[[web.Request], object], seen: Seen) -> tuple[web.AppRunner, str]:
    async def record(request: web.Request) -> web.StreamResponse:
        seen.requests.append((request.host, request.path_qs, request.headers.get("Authorization")))
        return await handler(request)  # type: ignore[misc]

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def client() -> AsyncIterator[tuple[UpstreamClient, Keyring]]:
    ring = Keyring.generate()
    cfg = UpstreamSection(
        connect_timeout=2, first_byte_timeout=1, idle_timeout=2, retries=2, egress_allow=["127.0.0.0/8"]
    )
    c = UpstreamClient(cfg, ring)
    await c.start()
    yield c, ring
    await c.close()


def _registry(ring: Keyring, url: str, username: str | None = "vendor") -> Registry:
    return Registry(
        id="r1",
        team_id="t",
        slug="unit",
        provider="other",
        endpoint="unit.test",
        url=url,
        insecure=True,
        username=username,
        secret_sealed=ring.seal(PASSWORD, "r1") if username else None,
    )


def _basic_ok(request: web.Request) -> bool:
    want = "Basic " + base64.b64encode(f"vendor:{PASSWORD}".encode()).decode()
    return request.headers.get("Authorization") == want


async def test_bearer_token_is_refetched_once_after_a_401(client):
    c, ring = client
    seen = Seen()
    state = {"token": "t1", "issued": 0, "accept": {"t1"}}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            if not _basic_ok(request):
                return web.Response(status=401)
            state["issued"] += 1
            return web.json_response({"token": f"t{state['issued']}", "expires_in": 300})
        if request.headers.get("Authorization") in {f"Bearer {t}" for t in state["accept"]}:
            return web.Response(body=b"manifest")
        realm = f"http://{request.host}/token"
        return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="unit"'})

    runner, url = await _serve(handler, seen)
    try:
        reg = _registry(ring, url)
        state["accept"] = {"t1"}
        async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert r.status == 200 and await r.read() == b"manifest"
        assert state["issued"] == 1
        # The registry now refuses t1 (revoked early): one refetch, then success.
        state["accept"] = {"t2"}
        async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert r.status == 200
        assert state["issued"] == 2
        # It refuses every token: the vendor's credentials are reported as rejected.
        state["accept"] = set()
        with pytest.raises(CredentialsRejected) as info:
            async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull"):
                pass
        assert "unit" in str(info.value) and PASSWORD not in str(info.value)
        # The token went to the registry and its realm only; the password only to the realm.
        assert all(auth is None or PASSWORD not in auth for _, p, auth in seen.requests if p != "/token")
    finally:
        await runner.cleanup()


async def test_redirects_are_followed_without_credentials_off_origin(client):
    c, ring = client
    cdn_seen, reg_seen = Seen(), Seen()

    async def cdn(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization"):
            return web.Response(status=400, text="two auth mechanisms")
        return web.Response(body=b"blob-bytes")

    cdn_runner, cdn_url = await _serve(cdn, cdn_seen)

    async def registry(request: web.Request) -> web.StreamResponse:
        if not _basic_ok(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="unit"'})
        if request.path.endswith("/relative"):
            return web.Response(status=307, headers={"Location": "/storage/blob?sig=a%2Fb"})
        if request.path.startswith("/storage/"):
            return web.Response(body=b"same-origin-bytes")
        return web.Response(status=307, headers={"Location": f"{cdn_url}/cdn/blob?X-Amz-Signature=a%2Fb"})

    reg_runner, reg_url = await _serve(registry, reg_seen)
    try:
        reg = _registry(ring, reg_url)
        async with c.request(reg, "GET", "/v2/a/blobs/x", {}, "repository:a:pull") as r:
            assert (r.status, await r.read()) == (200, b"blob-bytes")
        assert cdn_seen.requests == [(cdn_url.split("//")[1], "/cdn/blob?X-Amz-Signature=a%2Fb", None)]
        async with c.request(reg, "GET", "/v2/a/blobs/relative", {}, "repository:a:pull") as r:
            assert (r.status, await r.read()) == (200, b"same-origin-bytes")
        assert reg_seen.requests[-1][1] == "/storage/blob?sig=a%2Fb"
    finally:
        await reg_runner.cleanup()
        await cdn_runner.cleanup()


async def test_5xx_is_retried_then_passed(client):
    c, ring = client
    seen = Seen()
    answers = [503, 502, 200]

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=answers.pop(0) if answers else 500, body=b"ok")

    runner, url = await _serve(handler, seen)
    try:
        reg = _registry(ring, url, username=None)
        async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert r.status == 200
        async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert r.status == 500  # after retries the failure is the caller's to map
        assert len(seen.requests) == 3 + 3
    finally:
        await runner.cleanup()


async def test_unreachable_and_silent_registries(client):
    c, ring = client
    with pytest.raises(UpstreamUnavailable):
        async with c.request(_registry(ring, "http://127.0.0.1:9", None), "GET", "/v2/", {}, "x"):
            pass

    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamTimeout):
            async with c.request(_registry(ring, f"http://127.0.0.1:{port}", None), "GET", "/v2/", {}, "x"):
                pass
        assert accepted == 3  # one try and two retries, each cut at the first-byte timeout
    finally:
        server.close()


async def test_ecr_token_refreshed_early_after_a_401(client):
    c, ring = client
    api_seen, reg_seen = Seen(), Seen()
    issued = []

    async def ecr_api(request: web.Request) -> web.StreamResponse:
        assert request.headers["X-Amz-Target"].endswith("GetAuthorizationToken")
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAUNIT/")
        issued.append(f"pw{len(issued) + 1}")
        token = base64.b64encode(f"AWS:{issued[-1]}".encode()).decode()
        return web.json_response({"authorizationData": [{"authorizationToken": token, "expiresAt": 4102444800}]})

    api_runner, api_url = await _serve(ecr_api, api_seen)
    accept = {"pw1"}

    async def registry(request: web.Request) -> web.StreamResponse:
        ok = {"Basic " + base64.b64encode(f"AWS:{p}".encode()).decode() for p in accept}
        if request.headers.get("Authorization") in ok:
            return web.Response(body=b"m")
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="ecr"'})

    reg_runner, reg_url = await _serve(registry, reg_seen)
    try:
        reg = Registry(
            id="e1",
            team_id="t",
            slug="ecr",
            provider="ecr",
            endpoint="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            url=reg_url,
            insecure=True,
            username=None,
            secret_sealed=ring.seal("unit-secret-key", "e1"),
            options={"access_key_id": "AKIAUNIT", "api_url": api_url + "/"},
        )
        for _ in range(3):
            async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
                assert r.status == 200
        assert issued == ["pw1"]  # 12 h token: fetched once
        accept = {"pw2"}  # the registry stops accepting the cached token
        async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert r.status == 200
        assert issued == ["pw1", "pw2"]  # one early refresh
        assert all("eu-west-1/ecr/aws4_request" in (auth or "") for _, _, auth in api_seen.requests)
        assert all("unit-secret-key" not in (auth or "") for _, _, auth in api_seen.requests + reg_seen.requests)
    finally:
        await api_runner.cleanup()
        await reg_runner.cleanup()


async def test_ecr_assumes_the_role_first(client):
    c, ring = client
    sts_seen, api_seen, reg_seen = Seen(), Seen(), Seen()
    forms: list[str] = []

    async def sts(request: web.Request) -> web.StreamResponse:
        forms.append(await request.text())
        return web.Response(
            content_type="text/xml",
            text=(
                '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
                "<Credentials><AccessKeyId>ASIAASSUMED</AccessKeyId><SecretAccessKey>assumed-secret</SecretAccessKey>"
                "<SessionToken>session-tok</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials>"
                "</AssumeRoleResult></AssumeRoleResponse>"
            ),
        )

    async def ecr_api(request: web.Request) -> web.StreamResponse:
        token = base64.b64encode(b"AWS:pw").decode()
        return web.json_response({"authorizationData": [{"authorizationToken": token, "expiresAt": 4102444800}]})

    async def registry(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") == "Basic " + base64.b64encode(b"AWS:pw").decode():
            return web.Response(body=b"m")
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="ecr"'})

    runners = []
    try:
        for handler, seen in ((sts, sts_seen), (ecr_api, api_seen), (registry, reg_seen)):
            runners.append(await _serve(handler, seen))
        (_, sts_url), (_, api_url), (_, reg_url) = runners
        reg = Registry(
            id="e2",
            team_id="t",
            slug="ecr-role",
            provider="ecr",
            endpoint="123456789012.dkr.ecr.us-west-2.amazonaws.com",
            url=reg_url,
            insecure=True,
            username=None,
            secret_sealed=ring.seal("base-secret", "e2"),
            options={
                "access_key_id": "AKIABASE",
                "role_arn": "arn:aws:iam::123456789012:role/pull",
                "api_url": api_url + "/",
                "sts_url": sts_url + "/",
            },
        )
        async with c.request(reg, "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert r.status == 200
        # STS was called with the stored key, for that role; ECR with the assumed credentials.
        assert sts_seen.requests[0][2].startswith("AWS4-HMAC-SHA256 Credential=AKIABASE/")
        assert "/us-west-2/sts/aws4_request" in sts_seen.requests[0][2]
        assert "Action=AssumeRole" in forms[0] and "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fpull" in forms[0]
        assert api_seen.requests[0][2].startswith("AWS4-HMAC-SHA256 Credential=ASIAASSUMED/")
    finally:
        for runner, _ in runners:
            await runner.cleanup()


async def test_token_answer_arriving_in_pieces_is_read_whole(client):
    """A read returns what has arrived: the token answer is read to its end (bounded), not cut
    at the first packet (which used to fail as 'not JSON')."""
    c, ring = client
    seen = Seen()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"token": "piece')
            await asyncio.sleep(0.2)
            await resp.write(b'wise", "expires_in": 300}')
            return resp
        if request.headers.get("Authorization") == "Bearer piecewise":
            return web.Response(body=b"manifest")
        realm = f"http://{request.host}/token"
        return web.Response(status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})

    runner, url = await _serve(handler, seen)
    try:
        async with c.request(_registry(ring, url), "GET", "/v2/a/manifests/v1", {}, "repository:a:pull") as r:
            assert (r.status, await r.read()) == (200, b"manifest")
    finally:
        await runner.cleanup()
