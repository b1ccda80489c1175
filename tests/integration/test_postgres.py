"""PostgreSQL: the store on a real server, and two `pullgate serve` replicas sharing it.

The cluster is Debian's (scripts/test.sh installs it). Locally without it these
tests skip and say why; under CI=true a missing server is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from proxy import bootstrap, keyrotation
from proxy.config import load
from proxy.domains.service import key_aad
from proxy.secrets import Keyring
from proxy.store import open_store
from proxy.store.base import Conflict, license_hash
from proxy.store.models import Registry as RegistryRow
from proxy.store.postgres import LISTENER_NAME, PostgresStore
from proxy.store.schema import MIGRATIONS
from proxy.store.sqlite import SQLiteStore
from tests.support.dns_server import LoopbackDNS
from tests.support.postgres import PostgresCluster
from tests.support.pullgate import REPO_ROOT, Pullgate
from tests.support.registry import Registry
from tests.support.store_migrations import check_channels_migration

OCI = "application/vnd.oci.image.manifest.v1+json"
PROPAGATION = 1.5  # seconds; the license cache TTL is 5


async def fresh_db(cluster: PostgresCluster) -> str:
    name = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(cluster.dsn())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return cluster.dsn(name)


def seal(value: str, cid: str) -> str:
    return f"sealed:{cid}:{value}"


# --- the store --------------------------------------------------------------------------


async def test_placeholders_on_the_server(cluster: PostgresCluster):
    store = await open_store(await fresh_db(cluster), Path("."))
    try:
        row = await store.fetchone("SELECT '?' AS lit, 'it''s ?' AS esc, ? AS v, ? AS w", ("one", "two"))
        assert row == {"lit": "?", "esc": "it's ?", "v": "one", "w": "two"}
    finally:
        await store.close()


async def test_migrations_concurrent_and_idempotent(cluster: PostgresCluster):
    dsn = await fresh_db(cluster)
    stores = [PostgresStore(dsn) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # three replicas starting together
    try:
        rows = await stores[0].fetchall("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    again = PostgresStore(dsn)
    await again.open()
    try:
        assert len(await again.fetchall("SELECT version FROM schema_migrations")) == len(MIGRATIONS)
        # The advisory lock was released: nobody holds it now.
        assert await again.fetchall("SELECT objid FROM pg_locks WHERE locktype = 'advisory'") == []
    finally:
        await again.close()


async def test_channels_migration_on_existing_rows(cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch):
    store = PostgresStore(await fresh_db(cluster))

    async def no_migration(self: PostgresStore) -> None:
        return None

    with monkeypatch.context() as m:  # opened without migrating: the check migrates step by step
        m.setattr(PostgresStore, "migrate", no_migration)
        await store.open()
    try:
        await check_channels_migration(store, monkeypatch)
    finally:
        await store.close()


async def test_round_trip(cluster: PostgresCluster):
    store = await open_store(await fresh_db(cluster), Path("."))
    try:
        team = await store.ensure_team("acme")
        assert await store.ensure_team("acme") == team
        await store.ensure_api_token(team.id, "tok", "ci")
        await store.ensure_api_token(team.id, "tok", "ci")
        assert await store.team_by_token("tok") == team
        app = await store.create_app(team.id, "app-a", "App A", ["vendor/*"], None)
        with pytest.raises(Conflict):
            await store.create_app(team.id, "app-a", "again", [], None)
        assert (await store.app_by_slug("app-a")).image_allowlist == ("vendor/*",)
        reg = RegistryRow(
            id="r1",
            team_id=team.id,
            slug="reg",
            provider="other",
            endpoint="r.test",
            url="http://r.test",
            insecure=True,
            username="u",
            secret_sealed="s",
            allow_anonymous=True,
            options={"region": "x"},
            app_ids=(app.id,),
        )
        await store.put_registry(reg)
        await store.put_registry(reg)  # an update, links replaced
        assert await store.registries_of_team(team.id) == [reg]
        assert [r.slug for r in await store.anonymous_registries()] == ["reg"]
        assert await store.registries_for_app(app) == [reg]
        cid = await store.put_customer(
            team_id=team.id,
            app_id=app.id,
            name="C",
            email=None,
            license_id="L" * 20,
            seal=seal,
            expires_at="2031-01-01T00:00:00+00:00",
        )
        c = await store.customer_by_license("L" * 20)
        assert c is not None and c.id == cid and c.status == "active" and c.expires_at.year == 2031
        assert c.license_ref == license_hash("L" * 20)[:12]
        # status stays when the update passes none (COALESCE(?, status)).
        await store.set_customer_status(cid, "revoked")
        await store.put_customer(team_id=team.id, app_id=app.id, name="C2", email="e@x", license_id="L" * 20, seal=seal)
        c = await store.customer_by_id(cid)
        assert (c.status, c.name, c.expires_at) == ("revoked", "C2", None)
        assert [x.id for x in await store.customers_of_team(team.id, app.id)] == [cid]
        await store.update_customer(cid, name="C3", email=None, license_type="trial", expires_at=None)
        assert (await store.customer_by_id(cid)).license_type == "trial"
        # Pull logs: a blob beyond 2 GiB, time ranges as ISO text, LIMIT.
        big = 5 * 1024**3
        await store.insert_pull_logs(
            [
                (
                    "2030-01-01T00:00:00+00:00",
                    team.id,
                    cid,
                    "app-a",
                    "reg",
                    "blob",
                    "vendor/x",
                    "sha256:a",
                    200,
                    1,
                    big,
                    "miss",
                ),
                (
                    "2030-01-02T00:00:00+00:00",
                    team.id,
                    cid,
                    "app-a",
                    "reg",
                    "manifest",
                    "vendor/x",
                    "v1",
                    404,
                    0,
                    0,
                    None,
                ),
            ]
        )
        logs = await store.pull_logs(team.id, since="2030-01-01T00:00:00+00:00", limit=1)
        assert [(r["action"], r["customer_name"]) for r in logs] == [("manifest", "C3")]
        assert (await store.pull_logs(team.id, until="2030-01-02T00:00:00+00:00"))[0]["bytes"] == big
        assert await store.registries_last_used(team.id) == {"reg": "2030-01-02T00:00:00+00:00"}
        assert await store.pulled_repositories(team.id, "app-a") == [("reg", "vendor/x")]
        await store.purge_pull_logs("2030-01-02T00:00:00+00:00")
        assert len(await store.pull_logs(team.id)) == 1
        # Hostnames.
        await store.add_hostname(team.id, "b.example", "tok-b")
        await store.add_hostname(team.id, "a.example", "tok-a")
        with pytest.raises(Conflict):
            await store.add_hostname(team.id, "a.example", "tok-c")
        await store.set_hostname_status("a.example", "verified", None)
        await store.set_default_hostname(team.id, "a.example")
        await store.set_hostname_certificate("a.example", "PEM", "sealed", "2031-01-01T00:00:00+00:00")
        listed = await store.hostnames(team.id)
        assert [h.hostname for h in listed] == ["a.example", "b.example"]
        assert [h.is_default for h in listed] == [True, False]
        assert [h.hostname for h in await store.hostnames(status="verified")] == ["a.example"]
        assert (await store.hostname_by_token("tok-b")).hostname == "b.example"
        assert await store.delete_hostname(team.id, "b.example")
        assert not await store.delete_hostname(team.id, "b.example")
        # Key rotation's reseal, in one transaction (the hostname's TLS key too); then the registry goes.
        assert await store.sealed_hostname_keys() == [("a.example", "sealed")]
        await store.reseal([("r1", "s2")], [(cid, "l2")], [("a.example", "k2")])
        assert await store.sealed_registry_secrets() == [("r1", "s2")]
        assert await store.sealed_license_of(cid) == "l2"
        assert await store.sealed_hostname_keys() == [("a.example", "k2")]
        assert (await store.hostname("a.example")).key_sealed == "k2"
        assert await store.delete_registry(team.id, "reg")
        assert await store.registries_of_team(team.id) == []
        assert await store.ping()
    finally:
        await store.close()


async def test_key_rotation_reseals_hostname_keys(cluster: PostgresCluster, tmp_path: Path):
    """`keys rotate` on PostgreSQL: a custom hostname's TLS key comes out under the new key,
    so it still opens once the old key is gone."""
    store = await open_store(await fresh_db(cluster), Path("."))
    try:
        ring = Keyring.load_or_create(tmp_path / "keys.yaml")
        team = await store.ensure_team("acme")
        await store.add_hostname(team.id, "a.example", "tok-a")
        await store.set_hostname_certificate("a.example", "PEM", ring.seal("KEY", key_aad("a.example")), "2031-01-01")
        kid, count = await keyrotation.rotate(store, ring)
        assert count == 1
        [(name, sealed)] = await store.sealed_hostname_keys()
        assert name == "a.example" and ring.key_id_of(sealed) == kid
        assert Keyring(current=kid, keys={kid: ring.keys[kid]}).open(sealed, key_aad("a.example")) == "KEY"
    finally:
        await store.close()


async def test_bootstrap_applied_twice(cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PGT_BOOT_LIC", "lic-" + secrets.token_hex(12))
    dsn = await fresh_db(cluster)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "store": dsn,
                "bootstrap": {
                    "teams": [
                        {
                            "name": "boot",
                            "apps": [{"slug": "boot-app"}],
                            "registries": [
                                {
                                    "slug": "anon",
                                    "provider": "other",
                                    "endpoint": "anon.test",
                                    "url": "http://anon.test",
                                    "insecure": True,
                                }
                            ],
                            "customers": [{"name": "B", "app": "boot-app", "license_id_env": "PGT_BOOT_LIC"}],
                        }
                    ]
                },
            }
        )
    )
    cfg = load(cfg_path)
    keyring = Keyring.load_or_create(tmp_path / "keys.yaml")
    stores = [await open_store(dsn, tmp_path) for _ in range(2)]

    async def apply(store: Any) -> None:
        async with store.exclusive():
            await bootstrap.apply(cfg, store, keyring)

    try:
        await asyncio.gather(*(apply(s) for s in stores))  # two replicas at once
        await apply(stores[0])  # and a restart
        for table in ("teams", "apps", "registries", "customers"):
            assert (await stores[0].fetchone(f"SELECT COUNT(*) AS n FROM {table}"))["n"] == 1, table  # noqa: S608
    finally:
        for s in stores:
            await s.close()


async def test_notify_reaches_listeners(cluster: PostgresCluster, tmp_path: Path):
    dsn = await fresh_db(cluster)
    a, b = PostgresStore(dsn), PostgresStore(dsn)
    await a.open()
    await b.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await b.listen(heard.put_nowait)
        await a.notify("customer")
        assert await asyncio.wait_for(heard.get(), 2) == "customer"
    finally:
        await a.close()
        await b.close()
    # SQLite: one process, nothing to tell; both are harmless no-ops.
    lite = SQLiteStore(tmp_path / "s.db")
    await lite.open()
    try:
        await lite.listen(heard.put_nowait)
        await lite.notify("customer")
        assert heard.empty()
    finally:
        await lite.close()


# --- two replicas ------------------------------------------------------------------------


def _basic(license_id: str) -> str:
    return "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()


class Api:
    def __init__(self, server: Pullgate, token: str) -> None:
        self.server, self.token = server, token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method, self.server.admin_url + "/vendor/v3" + path, json=body, headers={"Authorization": self.token}
            ) as r,
        ):
            return r.status, (await r.json() if r.status != 204 else None)


async def pull_status(server: Pullgate, path: str, license_id: str, host: str | None = None) -> int:
    headers = {"Authorization": _basic(license_id), "Accept": OCI}
    if host:
        headers["Host"] = host
    async with aiohttp.ClientSession() as s, s.get(server.url + path, headers=headers) as r:
        await r.read()
        return r.status


async def until(server: Pullgate, path: str, license_id: str, want: int, host: str | None = None) -> float:
    """Seconds until a pull through `server` answers `want` (polled every 50 ms, at most 6 s)."""
    start = time.monotonic()
    while True:
        status = await pull_status(server, path, license_id, host)
        elapsed = time.monotonic() - start
        if status == want or elapsed > 6:
            assert status == want, f"still {status} after {elapsed:.1f}s"
            return elapsed
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def replicas(
    cluster: PostgresCluster, upstream_basic: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pullgate, Pullgate, str, LoopbackDNS]]:
    dsn = asyncio.run(fresh_db(cluster))
    token = "pgt_pg_" + secrets.token_hex(16)
    dns = LoopbackDNS()
    keys = tmp_path_factory.mktemp("pg-keys") / "keys.yaml"  # one keyring for both replicas
    env = {
        "PGT_PG_TOKEN": token,
        "PGT_PG_BASIC_PW": upstream_basic.password or "",
        "PGT_PG_UPSTREAM": upstream_basic.url,
    }
    teams = [
        {
            "name": "alpha",
            "api_tokens": [{"token_env": "PGT_PG_TOKEN"}],
            "apps": [{"slug": "pg-app"}],
            "registries": [
                {
                    "slug": "basic",
                    "provider": "other",
                    "endpoint": "registry.basic.test",
                    "url": upstream_basic.url,
                    "insecure": True,
                    "username": upstream_basic.username,
                    "password_env": "PGT_PG_BASIC_PW",
                }
            ],
        }
    ]
    settings: dict[str, Any] = {
        "store": dsn,
        "keys": {"file": str(keys)},
        "auth": {"license_cache_seconds": 5},
        # Hostnames reload by themselves only every minute: a fast change is the NOTIFY.
        "domains": {"resolver": [dns.nameserver], "refresh_seconds": 60},
    }
    servers: list[Pullgate] = []
    try:
        # One after the other: the first creates the shared keyring; both bootstrap the same teams.
        for name in ("pg-a", "pg-b"):
            servers.append(
                Pullgate(tmp_path_factory.mktemp(name), teams, env=env, settings=settings, name=name).start()
            )
        yield servers[0], servers[1], token, dns
    finally:
        for s in servers:
            s.stop()
        dns.stop()


BASE = "/v2/proxy/pg-app"


async def test_replicas_share_changes_at_once(replicas: tuple[Pullgate, Pullgate, str, LoopbackDNS]):
    a, b, token, dns = replicas
    api = Api(a, token)
    path = f"{BASE}/basic/vendor/oci/manifests/v1"
    # A customer made on A pulls through B.
    status, body = await api.call("POST", "/customer", {"name": "Shared", "appSlug": "pg-app"})
    assert status == 201, body
    cid, lic = body["customer"]["id"], body["customer"]["licenseId"]
    assert await pull_status(b, path, lic) == 200  # B now caches the license for 5 s
    # Revoked on A: B refuses well inside its cache TTL.
    assert (await api.call("POST", f"/customer/{cid}/revoke"))[0] == 200
    assert await until(b, path, lic, 401) < PROPAGATION
    assert (await api.call("POST", f"/customer/{cid}/restore"))[0] == 200
    assert await until(b, path, lic, 200) < PROPAGATION

    # Registry credentials: stored wrong on A (B caches that), then rotated on A; B uses the new ones.
    up = {
        "provider": "other",
        "endpoint": "rot.example.test",
        "slug": "rot",
        "url": a.env["PGT_PG_UPSTREAM"],
        "insecure": True,
        "username": "vendor",
        "password": "wrong",
        "skipValidation": True,
    }
    assert (await api.call("POST", "/external_registry", up))[0] == 201
    rot = f"{BASE}/rot/vendor/oci/manifests/v1"
    assert await pull_status(b, rot, lic) != 200
    status, body = await api.call(
        "PUT", "/external_registry/rot", {"password": a.env["PGT_PG_BASIC_PW"], "image": "vendor/oci:v1"}
    )
    assert status == 200, body
    assert await until(b, rot, lic, 200) < PROPAGATION

    # A hostname verified on A is served by B (whose own reload is a minute away).
    host = f"img-{secrets.token_hex(3)}.pg.example"
    status, body = await api.call("POST", "/custom_hostnames", {"hostname": host})
    assert status == 201, body
    assert await pull_status(b, path, lic, host) == 404
    dns.txt[f"_pullgate-challenge.{host}"] = [body["custom_hostname"]["verification"]["dnsValue"]]
    status, body = await api.call("POST", f"/custom_hostname/{host}/verify")
    assert body["custom_hostname"]["status"] == "verified", body
    assert await until(b, path, lic, 200, host) < PROPAGATION

    # The operator removes it on the store (`pullgate admin hostname rm`): both replicas stop serving it.
    argv = [sys.executable, "-m", "proxy", "admin", "hostname", "rm", host, "--config", str(a.config_path)]
    environ = {k: v for k, v in a.env.items() if not k.startswith("PULLGATE_")}
    removed = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, env=environ, cwd=REPO_ROOT
    )
    assert removed.returncode == 0, removed.stderr
    assert await until(b, path, lic, 404, host) < PROPAGATION
    assert await until(a, path, lic, 404, host) < PROPAGATION


async def test_listener_recovers_from_a_dropped_connection(
    cluster: PostgresCluster, replicas: tuple[Pullgate, Pullgate, str, LoopbackDNS]
):
    a, b, token, _dns = replicas
    api = Api(a, token)
    path = f"{BASE}/basic/vendor/oci/manifests/v1"
    status, body = await api.call("POST", "/customer", {"name": "Recover", "appSlug": "pg-app"})
    assert status == 201, body
    cid, lic = body["customer"]["id"], body["customer"]["licenseId"]
    conn = await asyncpg.connect(cluster.dsn())
    try:
        who = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'"
        before = {r["pid"] for r in await conn.fetch(who, LISTENER_NAME)}
        assert len(before) >= 2  # one listener per replica (earlier tests' stores are closed)
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1"
            " AND query LIKE 'LISTEN%'",
            LISTENER_NAME,
        )
        assert killed and all(r["ok"] for r in killed)
        # Both replicas listen again, on new connections.
        deadline = time.monotonic() + 10
        while True:
            now = {r["pid"] for r in await conn.fetch(who, LISTENER_NAME)}
            if len(now - before) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(now - before) >= 2, (before, now)
    finally:
        await conn.close()
    assert await pull_status(b, path, lic) == 200
    assert (await api.call("POST", f"/customer/{cid}/revoke"))[0] == 200
    assert await until(b, path, lic, 401) < PROPAGATION
