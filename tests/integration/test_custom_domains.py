"""A team's own hostname, end to end: add, verify (DNS or HTTP), its certificate
by SNI, skopeo pulling over https on it, and everything else refused there."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
import yaml

from proxy.domains.verify import WELL_KNOWN
from tests.support import skopeo
from tests.support.client import basic
from tests.support.dns_server import LoopbackDNS
from tests.support.poll import apoll
from tests.support.pullgate import REPO_ROOT, Pullgate
from tests.support.registry import Registry
from tests.support.tcp_front import TcpFront

ACME_HOST = "images.acme.test"
GLOBEX_HOST = "images.globex.test"


@dataclass
class Env:
    server: Pullgate
    dns: LoopbackDNS
    ca: trustme.CA
    tokens: dict[str, str]
    licenses: dict[str, str]
    workdir: Path

    async def api(self, team: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:
            async with s.request(
                method,
                f"{self.server.admin_url}/vendor/v3{path}",
                json=body,
                headers={"Authorization": self.tokens[team]},
            ) as r:
                return r.status, (await r.json() if r.status != 204 else {})

    def hosts_file(self) -> Path:
        f = self.workdir / "hosts"
        f.write_text(f"127.0.0.1 localhost {ACME_HOST} {GLOBEX_HOST} unverified.acme.test\n")
        return f


def _teams(upstream: Registry) -> list[dict]:
    def team(name: str) -> dict:
        return {
            "name": name,
            "api_tokens": [{"token_env": f"CD_TOKEN_{name.upper()}"}],
            "apps": [{"slug": name}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.test", "url": upstream.url, "insecure": True}
            ],
            "customers": [{"name": "C", "app": name, "license_id_env": f"CD_LIC_{name.upper()}"}],
        }

    return [team("acme"), team("globex")]


def _start(
    tmp: Path,
    upstream: Registry,
    dns: LoopbackDNS,
    ca: trustme.CA | None,
    name: str,
    domains: dict | None = None,
    extra_hosts: tuple[str, ...] = (),
) -> Env:
    tokens = {t: f"pgt_{t}_{secrets.token_hex(12)}" for t in ("acme", "globex")}
    licenses = {t: f"lic-{t}-{secrets.token_hex(12)}" for t in ("acme", "globex")}
    env = {f"CD_TOKEN_{t.upper()}": v for t, v in tokens.items()} | {
        f"CD_LIC_{t.upper()}": v for t, v in licenses.items()
    }
    settings: dict = {"domains": {"resolver": [dns.nameserver], "refresh_seconds": 1}}
    if ca is not None:
        default = ca.issue_cert("127.0.0.1", "localhost")
        default.cert_chain_pems[0].write_to_path(tmp / "default.crt")
        default.private_key_pem.write_to_path(tmp / "default.key")
        settings["proxy"] = {"tls_cert_file": str(tmp / "default.crt"), "tls_key_file": str(tmp / "default.key")}
    server = Pullgate(tmp / name, _teams(upstream), env=env, settings=settings, name=name)
    config = yaml.safe_load(server.config_path.read_text())
    config["domains"].update(domains or {})
    config["proxy"]["hosts"] += list(extra_hosts)
    if ca is None:
        # The HTTP challenge is fetched from the hostname through a front (the egress
        # policy never lets the proxy connect to its own listener directly).
        front = TcpFront(server.port)
        config["domains"]["http_verify_port"] = front.port
    server.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Env(server.start(), dns, ca or trustme.CA(), tokens, licenses, tmp)


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS()
    server.a.update({ACME_HOST: "127.0.0.1", GLOBEX_HOST: "127.0.0.1", "unverified.acme.test": "127.0.0.1"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory: pytest.TempPathFactory, upstream_anon: Registry, dns: LoopbackDNS) -> Iterator[Env]:
    env = _start(tmp_path_factory.mktemp("domains-tls"), upstream_anon, dns, trustme.CA(), "pullgate-tls")
    yield env
    env.server.stop()
    for secret in [*env.tokens.values(), *env.licenses.values()]:
        assert secret not in env.server.log_text()


def _peer_names(port: int, server_name: str, ca: trustme.CA) -> list[str]:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False  # we read which certificate came, whichever it is
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]


async def _add_and_verify_by_dns(env: Env, team: str, hostname: str) -> None:
    status, body = await env.api(team, "POST", "/custom_hostnames", {"hostname": hostname})
    assert status == 201, body
    env.dns.txt[f"_pullgate-challenge.{hostname}"] = [body["custom_hostname"]["verification"]["dnsValue"]]
    status, body = await env.api(team, "POST", f"/custom_hostname/{hostname}/verify")
    assert (status, body["custom_hostname"]["status"]) == (200, "verified"), body


async def test_custom_domain_over_tls_end_to_end(tls_env: Env):
    env = tls_env
    await _add_and_verify_by_dns(env, "acme", ACME_HOST)
    await _add_and_verify_by_dns(env, "globex", GLOBEX_HOST)
    for team, host in (("acme", ACME_HOST), ("globex", GLOBEX_HOST)):
        leaf = env.ca.issue_cert(host)
        pems = {"certificate": leaf.cert_chain_pems[0].bytes().decode(), "key": leaf.private_key_pem.bytes().decode()}
        status, body = await env.api(team, "PUT", f"/custom_hostname/{host}/certificate", pems)
        assert status == 200, body
    # SNI: two hostnames, two certificates, one listener; anything else gets the default.
    deadline = time.monotonic() + 10
    while [_peer_names(env.server.port, h, env.ca) for h in (ACME_HOST, GLOBEX_HOST)] != [[ACME_HOST], [GLOBEX_HOST]]:
        assert time.monotonic() < deadline, "the hostnames' certificates were never served"
        await asyncio.sleep(0.2)
    assert _peer_names(env.server.port, "localhost", env.ca) == ["localhost"]  # the default certificate

    # The challenge names the custom host, so the client never leaves it.
    ctx = ssl.create_default_context()
    env.ca.configure_trust(ctx)
    conn = aiohttp.TCPConnector(ssl=ctx, resolver=_Loopback())
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(f"https://{ACME_HOST}:{env.server.port}/v2/") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith(
                f'Bearer realm="https://{ACME_HOST}:{env.server.port}/v2/token",service="{ACME_HOST}:{env.server.port}"'
            )
        # Another team's license does not exist on acme's hostname.
        url = f"https://{ACME_HOST}:{env.server.port}/v2/proxy/acme/up/vendor/oci/manifests/v1"
        async with s.get(url, headers={"Authorization": basic(env.licenses["globex"])}) as r:
            assert r.status == 401
        async with s.get(
            f"https://{ACME_HOST}:{env.server.port}/v2/token?scope=repository:proxy/globex/up/vendor/oci:pull",
            headers={"Authorization": basic(env.licenses["globex"])},
        ) as r:
            assert r.status == 401
        # An unverified hostname is not served at all.
        async with s.get(f"https://unverified.acme.test:{env.server.port}/v2/", ssl=False) as r:
            assert r.status == 404 and (await r.json())["errors"][0]["code"] == "NAME_UNKNOWN"

    certs = env.workdir / "certs"
    certs.mkdir(exist_ok=True)
    env.ca.cert_pem.write_to_path(certs / "ca.crt")
    img_ref = f"docker://{ACME_HOST}:{env.server.port}/proxy/acme/up/vendor/oci:v1"
    res = await asyncio.to_thread(
        skopeo.copy,
        img_ref,
        env.workdir / "out",
        creds=f"LICENSE_ID:{env.licenses['acme']}",
        tls_verify=True,
        extra_args=["--src-cert-dir", str(certs)],
        hosts_file=env.hosts_file(),
    )
    assert res.returncode == 0, res.stderr
    assert (env.workdir / "out" / "manifest.json").exists()
    # globex's app is not served on acme's hostname, even with globex's own license.
    res = await asyncio.to_thread(
        skopeo.copy,
        f"docker://{ACME_HOST}:{env.server.port}/proxy/globex/up/vendor/oci:v1",
        env.workdir / "no",
        creds=f"LICENSE_ID:{env.licenses['globex']}",
        tls_verify=True,
        extra_args=["--src-cert-dir", str(certs)],
        hosts_file=env.hosts_file(),
    )
    assert res.returncode != 0


async def test_metrics_show_certificate_expiry(tls_env: Env):
    # A hostname of its own with a certificate (it relied on the end-to-end test's, run before it).
    host = "metrics.acme.test"
    await _add_and_verify_by_dns(tls_env, "acme", host)
    leaf = tls_env.ca.issue_cert(host)
    pems = {"certificate": leaf.cert_chain_pems[0].bytes().decode(), "key": leaf.private_key_pem.bytes().decode()}
    status, body = await tls_env.api("acme", "PUT", f"/custom_hostname/{host}/certificate", pems)
    assert status == 200, body

    async def shown() -> bool:
        async with aiohttp.ClientSession() as s, s.get(tls_env.server.admin_url + "/metrics") as r:
            return f'pullgate_certificate_expiry_timestamp_seconds{{hostname="{host}"}}' in await r.text()

    await apoll(shown, 10, "the certificate's expiry in /metrics")


async def test_http_challenge_verifies_through_the_hostname(tmp_path: Path, upstream_anon: Registry, dns: LoopbackDNS):
    """Only when the operator turns it on (`domains.http_challenge`), and with no TXT record at all."""
    env = _start(tmp_path, upstream_anon, dns, None, "pullgate-http", {"http_challenge": True})
    try:
        host = "http-only.acme.test"
        dns.a[host] = "127.0.0.1"
        status, body = await env.api("acme", "POST", "/custom_hostnames", {"hostname": host})
        assert status == 201
        token = body["custom_hostname"]["verification"]["dnsValue"]
        assert body["custom_hostname"]["verification"]["httpUrl"] == f"http://{host}{WELL_KNOWN}{token}"
        assert f"_pullgate-challenge.{host}" not in dns.txt
        async with aiohttp.ClientSession() as s:
            # The proxy answers the challenge only for that hostname.
            url = f"{env.server.url}/.well-known/pullgate-challenge/{token}"
            async with s.get(url, headers={"Host": f"{host}:{env.server.port}"}) as r:
                assert (r.status, await r.text()) == (200, token)
            async with s.get(url, headers={"Host": "other.acme.test"}) as r:
                assert r.status == 404
        status, body = await env.api("acme", "POST", f"/custom_hostname/{host}/verify")
        assert body["custom_hostname"]["status"] == "verified", body
        # Now served (at the next host-table refresh), bound to acme.
        assert await _until(lambda: _get(env, host), 401) == 401
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{env.server.url}/v2/", headers={"Host": host}) as r:
                assert r.status == 401
                assert f'realm="http://{host}/v2/token"' in r.headers["WWW-Authenticate"]
    finally:
        env.server.stop()


class _Loopback(aiohttp.abc.AbstractResolver):
    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


def test_hostname_cli(tls_env: Env):
    import os
    import subprocess
    import sys

    from tests.support.pullgate import REPO_ROOT

    env = {**os.environ, "PULLGATE_API_ORIGIN": tls_env.server.admin_url, "PULLGATE_API_TOKEN": tls_env.tokens["acme"]}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "hostname", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO_ROOT,
        )

    host = "cli.acme.test"
    added = cli("add", host)
    assert added.returncode == 0, added.stderr
    token = next(line.split('"')[1] for line in added.stdout.splitlines() if "TXT" in line)
    assert f"_pullgate-challenge.{host}" in added.stdout
    failed = cli("verify", host)
    assert failed.returncode == 1 and "failed" in failed.stdout
    tls_env.dns.txt[f"_pullgate-challenge.{host}"] = [token]
    ok = cli("verify", host)
    assert ok.returncode == 0 and "verified" in ok.stdout
    assert cli("default", host).returncode == 0
    listed = cli("ls", "-o", "json")
    rows = {h["hostname"]: h for h in __import__("json").loads(listed.stdout)}
    assert rows[host]["isDefault"] and rows[host]["status"] == "verified"
    leaf = tls_env.ca.issue_cert(host)
    cert, key = tls_env.workdir / "cli.crt", tls_env.workdir / "cli.key"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    up = cli("cert", host, "--cert", str(cert), "--key", str(key))
    assert up.returncode == 0 and "expires" in up.stdout
    assert leaf.private_key_pem.bytes().decode().splitlines()[1] not in up.stdout + up.stderr
    assert cli("rm", host).returncode == 0
    gone = cli("verify", host)
    assert gone.returncode == 1 and "404" in gone.stderr


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def _get(env: Env, host: str, path: str = "/v2/", team: str | None = None) -> int:
    headers = {"Host": host, "Accept": OCI_MANIFEST}
    if team is not None:
        headers["Authorization"] = basic(env.licenses[team])
    async with aiohttp.ClientSession() as s, s.get(env.server.url + path, headers=headers) as r:
        await r.read()
        return r.status


async def _until(check: Callable[[], Awaitable[int]], want: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (got := await check()) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return got


async def _host_table_refreshed(env: Env, team: str) -> None:
    """Wait for a host-table refresh that began after now: a control hostname verified
    now is served once one has (a negative, "not served", needs this point in time)."""
    control = f"control-{secrets.token_hex(4)}.{team}.test"
    await _add_and_verify_by_dns(env, team, control)
    assert await _until(lambda: _get(env, control), 401) == 401, "no host-table refresh"
    status, body = await env.api(team, "DELETE", f"/custom_hostname/{control}")
    assert status in (200, 204), body


def _manifest(team: str) -> str:
    return f"/v2/proxy/{team}/up/vendor/oci/manifests/v1"


async def test_http_challenge_is_off_by_default(tmp_path: Path, upstream_anon: Registry, dns: LoopbackDNS):
    """The proxy answering for a name proves DNS points here, not who owns it: DNS TXT only."""
    env = _start(tmp_path, upstream_anon, dns, None, "pullgate-http-off")
    try:
        host = "http-off.acme.test"
        dns.a[host] = "127.0.0.1"
        status, body = await env.api("acme", "POST", "/custom_hostnames", {"hostname": host})
        assert status == 201
        h = body["custom_hostname"]
        assert h["verification"]["httpUrl"] is None  # not advertised as a way to verify
        token = h["verification"]["dnsValue"]
        # The challenge would succeed through the hostname...
        async with aiohttp.ClientSession() as s:
            url = f"{env.server.url}/.well-known/pullgate-challenge/{token}"
            async with s.get(url, headers={"Host": host}) as r:
                assert (r.status, await r.text()) == (200, token)
        # ...and counts for nothing.
        status, body = await env.api("acme", "POST", f"/custom_hostname/{host}/verify")
        h = body["custom_hostname"]
        assert (status, h["status"]) == (200, "failed"), body
        assert "DNS TXT record only" in h["reason"] and "HTTP challenge is off" in h["reason"]
        await _host_table_refreshed(env, "acme")
        assert await _get(env, host) == 404
        # The TXT record is the way.
        dns.txt[f"_pullgate-challenge.{host}"] = [token]
        status, body = await env.api("acme", "POST", f"/custom_hostname/{host}/verify")
        assert body["custom_hostname"]["status"] == "verified", body
        assert await _until(lambda: _get(env, host), 401) == 401
    finally:
        env.server.stop()


async def test_operator_hosts_cannot_be_taken_over(tmp_path: Path, upstream_anon: Registry, dns: LoopbackDNS):
    """Hole 2: a team claimed the operator's proxy.hosts name, "verified" it through the HTTP check
    (the proxy itself answers), and from then on every other team's licenses were refused on it."""
    operator = "proxy.operator.test"
    domains = {"http_challenge": True, "reserved": ["corp.operator.test"]}
    env = _start(tmp_path, upstream_anon, dns, None, "pullgate-takeover", domains, extra_hosts=(operator,))
    try:
        names = [operator, f"eu.{operator}", "corp.operator.test", "images.corp.operator.test"]
        for name in names:
            dns.a[name] = "127.0.0.1"
        assert await _get(env, operator, _manifest("globex"), "globex") == 200
        answers = {}
        for name in names:  # the attacker's whole path: add, then verify over HTTP
            answers[name] = await env.api("acme", "POST", "/custom_hostnames", {"hostname": name})
            if answers[name][0] == 201:
                await env.api("acme", "POST", f"/custom_hostname/{name}/verify")
        await _host_table_refreshed(env, "acme")
        # The other team still pulls on the operator's name; acme's name is not bound to acme.
        assert await _get(env, operator, _manifest("globex"), "globex") == 200
        assert await _get(env, operator, _manifest("acme"), "acme") == 200
        for name in names:
            status, body = answers[name]
            assert status == 409, (name, body)
            assert "reserved by the operator" in body["message"], body
            assert await _get(env, name) == (401 if name == operator else 404)
        status, body = await env.api("acme", "GET", "/custom_hostnames")
        assert body["custom_hostnames"] == []
        # An ordinary name still verifies over HTTP when the operator allows it.
        free = "images.acme.test"
        status, body = await env.api("acme", "POST", "/custom_hostnames", {"hostname": free})
        assert status == 201 and body["custom_hostname"]["verification"]["httpUrl"]
        status, body = await env.api("acme", "POST", f"/custom_hostname/{free}/verify")
        assert body["custom_hostname"]["status"] == "verified", body
    finally:
        env.server.stop()


def _admin(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PULLGATE_")}
    argv = [sys.executable, "-m", "proxy", "admin", "hostname", *args, "--config", str(env.server.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environ, cwd=REPO_ROOT)


async def test_admin_hostname_ls_and_rm_on_the_store(tmp_path: Path, upstream_anon: Registry, dns: LoopbackDNS):
    """The operator lists every team's hostnames and removes any; the running server stops serving it."""
    env = _start(tmp_path, upstream_anon, dns, None, "pullgate-admin-hostnames")
    try:
        taken, pending = "taken.acme.test", "pending.globex.test"
        dns.a[taken] = "127.0.0.1"
        status, body = await env.api("acme", "POST", "/custom_hostnames", {"hostname": taken})
        assert status == 201, body
        dns.txt[f"_pullgate-challenge.{taken}"] = [body["custom_hostname"]["verification"]["dnsValue"]]
        verified = (await env.api("acme", "POST", f"/custom_hostname/{taken}/verify"))[1]["custom_hostname"]
        assert verified["status"] == "verified", verified
        assert (await env.api("acme", "POST", f"/custom_hostname/{taken}/default"))[0] == 200
        assert (await env.api("globex", "POST", "/custom_hostnames", {"hostname": pending}))[0] == 201
        assert await _until(lambda: _get(env, taken, _manifest("acme"), "acme"), 200) == 200

        listed = await asyncio.to_thread(_admin, env, "ls", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["hostname"]: r for r in json.loads(listed.stdout)}
        assert {h: (r["team"], r["status"], r["isDefault"]) for h, r in rows.items()} == {
            taken: ("acme", "verified", True),
            pending: ("globex", "pending", False),
        }
        table = (await asyncio.to_thread(_admin, env, "ls")).stdout.splitlines()
        assert table[0].split() == ["TEAM", "HOSTNAME", "STATUS", "DEFAULT", "NOTE"]
        assert ["acme", taken, "verified", "yes"] in [line.split() for line in table[1:]]
        only = json.loads((await asyncio.to_thread(_admin, env, "ls", "--team", "globex", "-o", "json")).stdout)
        assert [r["hostname"] for r in only] == [pending]

        wrong_team = await asyncio.to_thread(_admin, env, "rm", taken, "--team", "globex")
        assert wrong_team.returncode == 1 and "no hostname" in wrong_team.stderr
        removed = await asyncio.to_thread(_admin, env, "rm", taken)
        assert removed.returncode == 0 and f"removed {taken} (team acme)" in removed.stdout, removed.stderr
        # The running server picks the removal up (SQLite: its next host-table refresh).
        assert await _until(lambda: _get(env, taken, _manifest("acme"), "acme"), 404) == 404
        assert (await env.api("acme", "GET", "/custom_hostnames"))[1]["custom_hostnames"] == []
        gone = await asyncio.to_thread(_admin, env, "rm", taken)
        assert gone.returncode == 1 and "no hostname" in gone.stderr
        left = json.loads((await asyncio.to_thread(_admin, env, "ls", "-o", "json")).stdout)
        assert [r["hostname"] for r in left] == [pending]
    finally:
        env.server.stop()
