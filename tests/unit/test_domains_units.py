"""Custom-domain building blocks: DNS and HTTP verification, certificates, SNI."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy.apierrors import Conflict
from proxy.config import DomainsSection, UpstreamSection
from proxy.dnsname import hostname_problem
from proxy.domains.names import Reserved
from proxy.domains.routing import HostTable
from proxy.domains.service import HostnameService
from proxy.domains.tls import CertificateError, SNIContexts, inspect, server_context
from proxy.domains.verify import verify_dns, verify_http
from proxy.secrets import Keyring
from proxy.store import open_store
from proxy.upstream.client import UpstreamClient
from tests.support.dns_server import LoopbackDNS


@pytest.fixture
def dns_server():
    server = LoopbackDNS()
    yield server
    server.stop()


async def test_dns_txt_verification(dns_server: LoopbackDNS):
    ns = [dns_server.nameserver]
    dns_server.txt["_pullgate-challenge.images.vendor.example"] = ["other", "tok-123"]
    assert (await verify_dns("images.vendor.example", "tok-123", ns)).ok
    wrong = await verify_dns("images.vendor.example", "tok-999", ns)
    assert not wrong.ok and "does not hold" in wrong.reason
    missing = await verify_dns("nothing.vendor.example", "tok-123", ns)
    assert not missing.ok and "no TXT record" in missing.reason
    assert ("_pullgate-challenge.images.vendor.example", "TXT") in dns_server.queries


async def test_http_verification_goes_through_the_hostname(dns_server: LoopbackDNS):
    seen = []

    async def challenge(request: web.Request) -> web.Response:
        seen.append(request.host)
        token = request.match_info["token"]
        return web.Response(text=token if token == "tok-abc" else "nope", status=200 if token == "tok-abc" else 404)

    app = web.Application()
    app.router.add_get("/.well-known/pullgate-challenge/{token}", challenge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    dns_server.a["images.vendor.example"] = "127.0.0.1"
    try:
        async with aiohttp.ClientSession() as s:
            ns = [dns_server.nameserver]
            assert (await verify_http(s, "images.vendor.example", "tok-abc", ns, port)).ok
            assert not (await verify_http(s, "images.vendor.example", "tok-zzz", ns, port)).ok
            unresolved = await verify_http(s, "gone.vendor.example", "tok-abc", ns, port)
            assert not unresolved.ok and "does not resolve" in unresolved.reason
        assert seen == ["images.vendor.example", "images.vendor.example"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "name",
    [
        "Images.vendor.example",
        "localhost",
        "a..b.example",
        "-x.example",
        "x" * 300,
        # Variants of a reserved name that would slip past an exact comparison: one spelling only.
        "images.vendor.example.",
        "images.vendor.example:443",
        "[::1]",
        "bücher.example",
    ],
)
def test_bad_hostnames(name: str):
    assert hostname_problem(name)


def test_certificates_are_checked_before_use():
    ca = trustme.CA()
    good = ca.issue_cert("images.vendor.example")
    cert, key = good.cert_chain_pems[0].bytes().decode(), good.private_key_pem.bytes().decode()
    info = inspect(cert, key, "images.vendor.example")
    assert info.names == ("images.vendor.example",)
    with pytest.raises(CertificateError, match="does not name"):
        inspect(cert, key, "other.vendor.example")
    other_key = ca.issue_cert("x.example").private_key_pem.bytes().decode()
    with pytest.raises(CertificateError, match="does not match") as err:
        inspect(cert, other_key, "images.vendor.example")
    assert "PRIVATE KEY" not in str(err.value)
    with pytest.raises(CertificateError):
        inspect("garbage", key)
    wildcard = ca.issue_cert("*.vendor.example")
    inspect(wildcard.cert_chain_pems[0].bytes().decode(), wildcard.private_key_pem.bytes().decode(), "a.vendor.example")


async def test_sni_picks_each_hostname_its_certificate():
    ca = trustme.CA()
    pems = {h: ca.issue_cert(h) for h in ("default.example", "one.example", "two.example")}

    def ctx(h: str) -> ssl.SSLContext:
        c = pems[h]
        return server_context(c.cert_chain_pems[0].bytes().decode(), c.private_key_pem.bytes().decode())

    sni = SNIContexts(ctx("default.example"))
    sni.replace({"one.example": ctx("one.example"), "two.example": ctx("two.example")})
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=sni.default)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        for name in ("one.example", "two.example", "default.example"):
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=name)
            peer = writer.get_extra_info("peercert")
            assert ("DNS", name) in peer["subjectAltName"]
            writer.close()
    finally:
        server.close()


def test_reserved_names_cover_their_subdomains():
    r = Reserved(["proxy.example.com:8443", "127.0.0.1:8080", "[::1]:8080", "localhost:8080"], ["*.corp.example"])
    for name in (
        "proxy.example.com",
        "eu.proxy.example.com",
        "a.b.proxy.example.com",
        "corp.example",
        "x.corp.example",
        "x.localhost",
        "PROXY.example.com.",
    ):
        assert r.covers(name), name
    for name in ("example.com", "xproxy.example.com", "proxy.example.com.evil.example", "corpx.example"):
        assert not r.covers(name), name
    assert "reserved by the operator" in r.reason("eu.proxy.example.com")


async def test_a_reserved_name_stored_earlier_is_never_served_nor_verified(tmp_path, dns_server: LoopbackDNS):
    """An operator reserves a name a team already verified: it stops being served for that team at once."""
    store = await open_store(f"sqlite:{tmp_path / 'pg.db'}", tmp_path)
    keyring = Keyring.load_or_create(tmp_path / "keys.yaml")
    try:
        team = await store.ensure_team("acme")
        for name in ("legacy.corp.example", "images.acme.example"):
            await store.add_hostname(team.id, name, f"tok-{name}")
            await store.set_hostname_status(name, "verified", None)
            dns_server.txt[f"_pullgate-challenge.{name}"] = [f"tok-{name}"]  # ownership proven by DNS, even
        reserved = Reserved(["proxy.example.com"], ["corp.example"])
        table = HostTable(store, keyring, ["proxy.example.com"], None, 60, reserved)
        await table.refresh()
        assert table.admits("legacy.corp.example") == (False, None)
        assert table.admits("images.acme.example") == (True, team.id)
        cfg = DomainsSection(resolver=[dns_server.nameserver], http_challenge=True)
        service = HostnameService(store, keyring, cfg, lambda: None, table.changed, reserved)  # type: ignore[arg-type,return-value]
        listed = {h["hostname"]: h for h in await service.list(team)}
        assert (listed["legacy.corp.example"]["status"], listed["images.acme.example"]["status"]) == (
            "failed",
            "verified",
        )
        checked = await service.verify(team, "legacy.corp.example")
        assert checked["status"] == "failed" and "reserved by the operator" in checked["reason"]
        assert checked["verification"]["httpUrl"] is None  # never advertised for a reserved name
        assert (await service.verify(team, "images.acme.example"))["status"] == "verified"
        with pytest.raises(Conflict, match="reserved by the operator"):
            await service.add(team, {"hostname": "eu.proxy.example.com"})
        with pytest.raises(Conflict, match="reserved by the operator"):
            await service.set_default(team, "legacy.corp.example")
    finally:
        await store.close()


def test_reserved_names_given_in_unicode_cover_their_punycode():
    """Clients (and the hostname rule) use the ASCII form: an operator's Unicode name must still bite."""
    r = Reserved(["bücher.example:443"], ["Bücher-Corp.EXAMPLE."])
    for name in ("xn--bcher-kva.example", "eu.xn--bcher-kva.example", "xn--bcher-corp-9db.example"):
        assert r.covers(name), name
    assert not r.covers("xn--bcher-kva.example.evil")


async def test_the_http_check_passes_the_egress_policy(dns_server: LoopbackDNS):
    """A hostname whose DNS points inward: the HTTP check is refused before connecting, logged as such."""
    seen = []

    async def challenge(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(text=request.match_info["token"])

    app = web.Application()
    app.router.add_get("/.well-known/pullgate-challenge/{token}", challenge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream = UpstreamClient(UpstreamSection(connect_timeout=2), Keyring.generate(), listens=("127.0.0.1:1",))
    await upstream.start()
    try:
        ns = [dns_server.nameserver]
        for name, address, words in (
            ("inward.vendor.example", "127.0.0.1", "a loopback address"),
            ("metadata.vendor.example", "169.254.169.254", "a link-local address"),
        ):
            dns_server.a[name] = address
            verdict = await verify_http(upstream.session, name, "tok-abc", ns, port)
            assert not verdict.ok and words in verdict.reason and "may not connect" in verdict.reason, verdict
        assert seen == []
    finally:
        await upstream.close()
        await runner.cleanup()
