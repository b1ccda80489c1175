"""Custom-domain building blocks: DNS and HTTP verification, certificates, SNI."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy.domains.tls import CertificateError, SNIContexts, inspect, server_context
from proxy.domains.verify import hostname_problem, verify_dns, verify_http
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


@pytest.mark.parametrize("name", ["Images.vendor.example", "localhost", "a..b.example", "-x.example", "x" * 300])
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
