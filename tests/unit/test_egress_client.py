"""The egress policy inside UpstreamClient, in process against loopback servers: every
outbound path (registry, redirect, token realm, ECR and STS APIs, the socket itself)
is refused before connecting, and the per-registry pool slot follows the response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from proxy.config import UpstreamSection
from proxy.secrets import Keyring
from proxy.store.models import Registry
from proxy.upstream.client import UpstreamClient
from proxy.upstream.connector import EgressDenied
from proxy.upstream.errors import EgressRefused, UpstreamBusy


async def _serve(handler) -> tuple[web.AppRunner, int, list[str]]:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1], seen  # type: ignore[union-attr]


@pytest.fixture
def big_body_ends() -> asyncio.Event:
    """Set, /v2/big's body comes to its end; until then it stays half sent."""
    return asyncio.Event()


@pytest.fixture
async def servers(big_body_ends: asyncio.Event) -> AsyncIterator[tuple[int, list[str], int, list[str]]]:
    """An allowed registry (401 Basic for /v2/ecr..., else 200) and a forbidden bystander."""

    async def registry(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/v2/ecr"):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="ecr"'})
        if request.path == "/v2/big":  # a body that takes its time: the connection stays in use
            resp = web.StreamResponse(headers={"Content-Length": "4"})
            await resp.prepare(request)
            await resp.write(b"ab")
            await big_body_ends.wait()
            await resp.write(b"cd")
            return resp
        return web.Response(body=b"ok")

    async def bystander(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"internal")

    reg_runner, reg_port, reg_seen = await _serve(registry)
    by_runner, by_port, by_seen = await _serve(bystander)
    yield reg_port, reg_seen, by_port, by_seen
    big_body_ends.set()  # the bodies a test left unread end, so their handlers do
    await reg_runner.cleanup()
    await by_runner.cleanup()


async def _client(allow: list[str], **kw: int) -> UpstreamClient:
    cfg = UpstreamSection(connect_timeout=1, first_byte_timeout=2, idle_timeout=2, retries=0, egress_allow=allow, **kw)
    c = UpstreamClient(cfg, Keyring.generate(), listens=("127.0.0.1:1", "127.0.0.1:2"))
    await c.start()
    return c


def _reg(url: str, provider: str = "other", **options: str) -> Registry:
    return Registry(
        id="r1",
        team_id="t",
        slug="unit",
        provider=provider,
        endpoint="unit.test",
        url=url,
        insecure=True,
        username=None,
        secret_sealed=None,
        options=options,
    )


async def test_ecr_and_sts_endpoints_pass_the_policy(servers):
    reg_port, _, by_port, by_seen = servers
    c = await _client([f"127.0.0.1:{reg_port}"])
    try:
        for options in (
            {"region": "us-east-1", "access_key_id": "AKIA", "api_url": f"http://127.0.0.1:{by_port}/"},
            {
                "region": "us-east-1",
                "access_key_id": "AKIA",
                "api_url": f"http://127.0.0.1:{reg_port}/",
                "role_arn": "arn:aws:iam::1:role/r",
                "sts_url": f"http://localhost:{by_port}/",
            },
        ):
            reg = _reg(f"http://127.0.0.1:{reg_port}", "ecr", **options)
            with pytest.raises(EgressRefused) as info:
                async with c.request(reg, "GET", "/v2/ecr/manifests/v1", {}, "repository:ecr:pull"):
                    pass
            assert info.value.refusal.rule == "loopback" and "127.0.0.1" not in info.value.message
        assert by_seen == []
    finally:
        await c.close()


async def test_literal_addresses_and_names_are_judged_by_what_they_reach(servers):
    reg_port, _, by_port, by_seen = servers
    c = await _client([f"127.0.0.1:{reg_port}"])
    try:
        for url in (
            f"http://127.0.0.1:{by_port}",
            f"http://localhost:{by_port}",
            f"http://[::ffff:127.0.0.1]:{by_port}",
            # Other spellings of loopback: IPv6, mapped in hex and in full, hex IPv4 (resolved by the C library).
            f"http://[::1]:{by_port}",
            f"http://[::ffff:7f00:1]:{by_port}",
            f"http://[0:0:0:0:0:ffff:127.0.0.1]:{by_port}",
            f"http://0x7f000001:{by_port}",
            f"http://0x7f.0.0.1:{by_port}",
        ):
            with pytest.raises(EgressRefused):
                async with c.request(_reg(url), "GET", "/v2/", {}, "x"):
                    pass
            denied = await c.refusal_for(url)
            assert denied is not None and denied.refusal.rule == "loopback"
        assert by_seen == []
        for legacy in (
            f"http://127.1:{by_port}",
            f"http://2130706433:{by_port}",
            f"http://127.0.0.1.:{by_port}",
            f"http://0177.0.0.1:{by_port}",
            f"http://017700000001:{by_port}",
        ):
            denied = await c.refusal_for(legacy)
            assert denied is not None and denied.refusal.rule == "non-canonical"
            with pytest.raises(EgressRefused):
                async with c.request(_reg(legacy), "GET", "/v2/", {}, "x"):
                    pass
        assert await c.refusal_for(f"http://127.0.0.1:{reg_port}/") is None
        assert (await c.refusal_for("http://127.0.0.1:2/")).refusal.rule == "own-listener"  # type: ignore[union-attr]
        async with c.request(_reg(f"http://localhost:{reg_port}"), "GET", "/v2/", {}, "x") as resp:
            assert resp.status == 200
    finally:
        await c.close()


async def test_the_socket_itself_is_checked_too(servers):
    """Should a later aiohttp reach a socket by another path than _resolve_host."""
    _, _, by_port, by_seen = servers
    c = await _client([])
    try:
        connector = c._connector
        assert connector is not None
        with pytest.raises(PermissionError):
            connector._socket((2, 1, 6, "", ("127.0.0.1", by_port)))
        with pytest.raises(EgressDenied):
            await connector._resolve_host("127.0.0.1", by_port)
        assert by_seen == []
    finally:
        await c.close()


async def test_pool_slot_is_held_until_the_response_is_released(servers, big_body_ends: asyncio.Event):
    reg_port, _, _, _ = servers
    c = await _client([f"127.0.0.1:{reg_port}"], pool_size=4, pool_per_registry=1)
    reg = _reg(f"http://127.0.0.1:{reg_port}")
    try:
        async with c.request(reg, "GET", "/v2/big", {}, "x") as held:
            assert held.connection is not None  # the body is still coming: the slot stays taken
            with pytest.raises(UpstreamBusy) as info:
                async with c.request(reg, "GET", "/v2/", {}, "x"):
                    pass
            assert info.value.status == 503 and "'unit'" in info.value.message
            big_body_ends.set()
            assert await held.read() == b"abcd"  # read to the end: the connection can go back to the pool
            big_body_ends.clear()
        for _ in range(3):  # released on leaving the block: the slot comes back each time
            async with asyncio.timeout(2), c.request(reg, "GET", "/v2/", {}, "x") as resp:
                await resp.read()
        # Left with the body unread, or by an exception: the connection is closed, the slot freed.
        async with c.request(reg, "GET", "/v2/big", {}, "x") as unread:
            assert unread.connection is not None
        assert unread.closed
        with pytest.raises(RuntimeError):
            async with c.request(reg, "GET", "/v2/big", {}, "x"):
                raise RuntimeError("the caller failed")
        async with asyncio.timeout(2), c.request(reg, "GET", "/v2/", {}, "x") as resp:
            assert resp.status == 200
    finally:
        await c.close()
