"""Server-side request forgery, tried as an attacker would (issue 8, hole 1).

A hostile registry of our own (tests/support/hostile.py) redirects the proxy's
manifest and blob requests at the admin listener, the cloud metadata address,
another loopback port, the proxy itself, or from https down to http; a vendor
points a registry at internal addresses. Every case is refused before any
connection, answered with the registry's slug and never the address, logged
and counted. Only 127.0.0.1 is ever dialled: 10.0.0.1 and 169.254.169.254 are
refused before connecting, which is what these tests prove.
"""

from __future__ import annotations

import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tests.support.client import basic
from tests.support.faults import Sentinel
from tests.support.inward import InwardRegistry
from tests.support.pullgate import Pullgate

LICENSE = "lic-egress-" + secrets.token_hex(12)
TOKEN = "pgt_egress_" + secrets.token_hex(16)
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Env:
    server: Pullgate
    hostile: InwardRegistry
    tls: InwardRegistry  # https, insecure: true
    plain: InwardRegistry  # what an https -> http redirect would reach
    sentinel: Sentinel  # reached only by the name "localhost"; must never be dialled

    async def pull(self, slug: str, kind: str = "manifests", ref: str = "v1") -> tuple[int, str]:
        url = f"{self.server.url}/v2/proxy/evil/{slug}/vendor/app/{kind}/{ref}"
        headers = {"Authorization": basic(LICENSE), "Accept": MANIFEST}
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers, allow_redirects=False) as r:
            return r.status, await r.text()

    async def api(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = f"{self.server.admin_url}/vendor/v3{path}"
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, url, json=body, headers={"Authorization": TOKEN}) as r,
        ):
            return r.status, await r.json()

    async def refused(self, slug: str, rule: str) -> float:
        async with aiohttp.ClientSession() as s, s.get(self.server.admin_url + "/metrics") as r:
            text = await r.text()
        m = re.search(rf'^pullgate_egress_refused_total{{registry="{slug}",rule="{rule}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


def _teams(env: dict[str, str], hostile: str, tls: str, by_name: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "evil",
            "api_tokens": [{"token_env": "EGRESS_TOKEN"}],
            "apps": [{"slug": "evil"}],
            "registries": [
                {"slug": "hostile", "provider": "other", "endpoint": "hostile.test", "url": hostile, "insecure": True},
                {"slug": "hostile-tls", "provider": "other", "endpoint": "tls.test", "url": tls, "insecure": True},
                {"slug": "by-name", "provider": "other", "endpoint": "name.test", "url": by_name, "insecure": True},
            ],
            "customers": [{"name": "C", "app": "evil", "license_id_env": "EGRESS_LICENSE"}],
        }
    ]


def _start(tmp: Path, name: str, allow: list[str], hostile: str, tls: str, by_name: str, ca: Path) -> Pullgate:
    env = {"EGRESS_LICENSE": LICENSE, "EGRESS_TOKEN": TOKEN, "SSL_CERT_FILE": str(ca)}
    teams = _teams(env, hostile, tls, by_name)
    return Pullgate(tmp / name, teams, env=env, settings={"upstream": {"egress_allow": allow}}, name=name).start()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[trustme.CA, Path]]:
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("egress-ca") / "ca.pem"
    authority.cert_pem.write_to_path(path)
    yield authority, path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, ca: tuple[trustme.CA, Path]) -> Iterator[Env]:
    authority, ca_path = ca
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_ctx)
    hostile, tls = InwardRegistry(), InwardRegistry(server_ctx)
    plain = InwardRegistry(leak=b"served over plain http")
    sentinel = Sentinel()
    # Exceptions name only the hostile registries' own ADDRESS:PORT.
    allow = [f"127.0.0.1:{r.port}" for r in (hostile, tls, plain)]
    by_name = f"http://localhost:{sentinel.port}"
    server = _start(tmp_path_factory.mktemp("egress"), "pullgate-egress", allow, hostile.url, tls.url, by_name, ca_path)
    try:
        yield Env(server, hostile, tls, plain, sentinel)
    finally:
        server.stop()
        for r in (hostile, tls, plain):
            r.stop()
        sentinel.stop()
    assert LICENSE not in server.log_text() and TOKEN not in server.log_text()


def _assert_refused_pull(status: int, body: str, slug: str, *never: str) -> None:
    assert status == 502, body
    assert '"UPSTREAM_ERROR"' in body and repr(slug) in body
    for text in ("127.0.0.1", "169.254", "# HELP", "pullgate_", "served over plain http", *never):
        assert text not in body, f"{text!r} leaked to the client: {body}"


async def test_redirect_to_the_admin_metrics_is_refused(env: Env):
    env.hostile.location = f"http://127.0.0.1:{env.server.admin_port}/metrics"
    before = await env.refused("hostile", "own-listener")
    for kind, ref in (("manifests", "v1"), ("blobs", "sha256:" + "a" * 64)):
        status, body = await env.pull("hostile", kind, ref)
        _assert_refused_pull(status, body, "hostile")
    assert await env.refused("hostile", "own-listener") == before + 2
    log = env.server.log_text()
    assert "egress refused for registry hostile" in log and "rule own-listener" in log


async def test_redirect_to_the_cloud_metadata_address_is_never_attempted(env: Env):
    env.hostile.location = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    before = await env.refused("hostile", "link-local")
    status, body = await env.pull("hostile")
    _assert_refused_pull(status, body, "hostile", "meta-data")
    # Counted as refused by the policy: refused before connecting, not a failed connection.
    assert await env.refused("hostile", "link-local") == before + 1
    assert "unreachable" not in body


async def test_redirect_to_another_loopback_port_is_refused(env: Env):
    other = Sentinel()
    try:
        env.hostile.location = f"{other.url}/v2/"
        before = await env.refused("hostile", "loopback")
        status, body = await env.pull("hostile")
        _assert_refused_pull(status, body, "hostile")
        assert await env.refused("hostile", "loopback") == before + 1
        assert other.connections == 0
    finally:
        other.stop()


async def test_redirect_from_https_to_http_is_refused_even_for_an_insecure_registry(env: Env):
    env.tls.location = f"{env.plain.url}/leak"
    seen = len(env.plain.requests)
    before = await env.refused("hostile-tls", "https-to-http")
    status, body = await env.pull("hostile-tls")
    _assert_refused_pull(status, body, "hostile-tls")
    assert len(env.plain.requests) == seen, "the plain-HTTP hop must never be sent"
    assert await env.refused("hostile-tls", "https-to-http") == before + 1
    # An https -> https hop still works: the same registry, redirected to itself.
    env.tls.location = f"{env.tls.url}/v2/"
    status, _ = await env.pull("hostile-tls")
    assert status == 200


async def test_token_realm_on_the_admin_listener_is_refused(env: Env):
    env.hostile.realm = f"http://127.0.0.1:{env.server.admin_port}/metrics"
    try:
        before = await env.refused("hostile", "own-listener")
        status, body = await env.pull("hostile")
        _assert_refused_pull(status, body, "hostile")
        assert await env.refused("hostile", "own-listener") == before + 1
    finally:
        env.hostile.realm = ""


async def test_registry_name_resolving_to_loopback_is_refused_at_connect(env: Env):
    before = await env.refused("by-name", "loopback")
    status, body = await env.pull("by-name")
    _assert_refused_pull(status, body, "by-name", "localhost")
    assert await env.refused("by-name", "loopback") == before + 1
    assert env.sentinel.connections == 0


@pytest.mark.parametrize(
    ("url", "rule", "words"),
    [
        ("http://10.0.0.1", "private", "10.0.0.1 is a private address (10.0.0.0/8)"),
        ("http://169.254.169.254", "link-local", "169.254.169.254 is a link-local address"),
        ("http://[::ffff:169.254.169.254]", "link-local", "IPv4-mapped"),
        ("http://127.0.0.1:{sentinel}", "loopback", "127.0.0.1 is a loopback address"),
        ("http://localhost:{sentinel}", "loopback", "localhost resolves to a loopback address"),
        ("http://127.0.0.1:{admin}", "own-listener", "this proxy's own listener"),
    ],
)
async def test_vendor_api_refuses_internal_destinations(env: Env, url: str, rule: str, words: str):
    url = url.format(sentinel=env.sentinel.port, admin=env.server.admin_port)
    slug = "int-" + secrets.token_hex(4)
    # skipValidation: the refusal must not depend on a connection attempt (none is made).
    create = {
        "provider": "other",
        "endpoint": f"{slug}.test",
        "slug": slug,
        "url": url,
        "insecure": True,
        "skipValidation": True,
    }
    status, body = await env.api("POST", "/external_registry", create)
    assert status == 400, body
    text = body["message"]
    assert f"rule {rule}" in text and words in text
    assert ("upstream.egress_allow" in text) == (rule != "own-listener")
    # Changing an allowed registry to that destination is refused the same way.
    ok = {**create, "url": env.hostile.url}
    status, body = await env.api("POST", "/external_registry", ok)
    assert status == 201, body
    status, body = await env.api("PUT", f"/external_registry/{slug}", {"url": url, "skipValidation": True})
    assert status == 400, body
    assert f"rule {rule}" in body["message"]
    assert env.sentinel.connections == 0


async def test_registry_test_is_not_a_port_scanner(env: Env):
    # A stored registry whose name resolves to a refused address: a 400 with the rule, no status.
    status, body = await env.api("PUT", "/external_registry/test", {"endpoint": "by-name", "image": "vendor/app:v1"})
    assert status == 400, body
    assert "rule loopback" in body["message"] and "status" not in body
    assert env.sentinel.connections == 0
    # A redirect to a refused destination during the test: also a 400 naming the rule.
    env.hostile.location = f"http://127.0.0.1:{env.server.port}/v2/"
    status, body = await env.api("PUT", "/external_registry/test", {"endpoint": "hostile", "image": "vendor/app:v1"})
    assert status == 400, body
    assert "rule own-listener" in body["message"]


async def test_own_listeners_are_refused_even_when_loopback_is_allowed(tmp_path: Path, ca: tuple[trustme.CA, Path]):
    hostile = InwardRegistry()
    sentinel = Sentinel()
    server = _start(
        tmp_path, "pullgate-own", ["127.0.0.0/8"], hostile.url, hostile.url, f"http://localhost:{sentinel.port}", ca[1]
    )
    env = Env(server, hostile, hostile, hostile, sentinel)
    try:
        for port, path in ((server.port, "/v2/"), (server.admin_port, "/metrics")):
            env.hostile.location = f"http://127.0.0.1:{port}{path}"
            before = await env.refused("hostile", "own-listener")
            status, body = await env.pull("hostile")
            _assert_refused_pull(status, body, "hostile")
            assert await env.refused("hostile", "own-listener") == before + 1
        # With 127.0.0.0/8 allowed, another loopback port is reachable (the allow entry works).
        env.hostile.location = f"{hostile.url}/v2/"
        assert (await env.pull("hostile"))[0] == 200
    finally:
        server.stop()
        hostile.stop()
        sentinel.stop()


async def _portal_csrf(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url) as r:
        m = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert m, f"no CSRF token on {url}"
    return m.group(1)


async def test_portal_forms_refuse_internal_destinations(env: Env):
    """The portal's add and edit forms (their POSTs, as a browser sends them) get the API's 400 and rule."""
    portal = env.server.admin_url + "/portal"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        login = {"csrf": await _portal_csrf(s, portal + "/login"), "token": TOKEN}
        async with s.post(portal + "/login", data=login) as r:
            assert r.status == 200 and str(r.url).endswith("/portal/images")
        slug = "portal-" + secrets.token_hex(4)
        add = {
            "tab": "other",
            "endpoint": f"{slug}.test",
            "slug": slug,
            "url": "http://10.0.0.1:5000",
            "insecure": "on",
            "skipValidation": "on",
            "csrf": await _portal_csrf(s, portal + "/images"),
        }
        async with s.post(portal + "/images", data=add) as r:
            page = await r.text()
            assert r.status == 400, page
        assert "rule private" in page and "upstream.egress_allow" in page
        status, _ = await env.api("POST", "/external_registry", {**_api_body(add), "url": env.hostile.url})
        assert status == 201
        edit = {
            "url": f"http://127.0.0.1:{env.sentinel.port}",
            "insecure": "on",
            "skipValidation": "on",
            "csrf": await _portal_csrf(s, f"{portal}/images/{slug}"),
        }
        async with s.post(f"{portal}/images/{slug}", data=edit) as r:
            page = await r.text()
            assert r.status == 400, page
        assert "rule loopback" in page and "upstream.egress_allow" in page
    status, body = await env.api("GET", f"/external_registry/{slug}", {})
    assert status == 200 and body["external_registry"]["url"] == env.hostile.url
    assert env.sentinel.connections == 0


def _api_body(form: dict[str, str]) -> dict[str, Any]:
    return {
        "provider": "other",
        "endpoint": form["endpoint"],
        "slug": form["slug"],
        "insecure": True,
        "skipValidation": True,
    }
