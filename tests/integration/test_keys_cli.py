"""`pullgate keys rotate` / `keys ls` end to end, as an operator runs them, on a real SQLite store.

Every sealed secret is covered: registry passwords, license IDs and custom hostnames' TLS
keys (a hostname whose key stayed under the old key would lose its certificate once that
key leaves the file)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import trustme
import yaml

from proxy import bootstrap
from proxy.config import load
from proxy.domains.service import key_aad
from proxy.secrets import Keyring, SecretError
from proxy.store import open_store
from proxy.store.base import Store
from tests.support.pullgate import Pullgate

ROOT = Path(__file__).resolve().parents[2]
HOSTNAME = "registry.acme.test"


@dataclass
class Setup:
    dir: Path
    config: Path
    db: Path
    keys: Path
    password: str
    license_id: str
    tls_key: str  # the custom hostname's private key (PEM)
    first_kid: str
    before: dict[str, list[tuple[str, str]]]
    bytes_during_bootstrap: bytes


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **(extra or {})}


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "keys", *args, "--config", str(cfg)],
        cwd=cfg.parent,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _write_config(d: Path) -> Path:
    data = {
        "store": f"sqlite:///{d / 'state' / 'pullgate.db'}",
        "keys": {"file": str(d / "state" / "keys.yaml")},
        "bootstrap": {
            "teams": [
                {
                    "name": "acme",
                    "apps": [{"slug": "myapp"}],
                    "registries": [
                        {
                            "slug": "vendor",
                            "provider": "other",
                            "endpoint": "registry.acme.example",
                            "username": "vendor",
                            "password_env": "KT_REG_PW",
                        },
                        {"slug": "anon", "provider": "other", "endpoint": "anon.acme.example"},
                    ],
                    "customers": [{"name": "Cust", "app": "myapp", "license_id_env": "KT_LICENSE"}],
                }
            ]
        },
    }
    cfg = d / "config.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    return cfg


def _sealed(db: Path) -> dict[str, list[tuple[str, str]]]:
    con = sqlite3.connect(db)
    try:
        regs = con.execute("SELECT id, secret_sealed FROM registries WHERE secret_sealed IS NOT NULL").fetchall()
        custs = con.execute("SELECT id, license_sealed FROM customers").fetchall()
        hosts = con.execute("SELECT hostname, key_sealed FROM custom_hostnames WHERE key_sealed IS NOT NULL").fetchall()
        assert con.execute("SELECT COUNT(*) FROM registries WHERE secret_sealed IS NULL").fetchone() == (1,)
    finally:
        con.close()
    return {"registries": sorted(regs), "customers": sorted(custs), "hostnames": sorted(hosts)}


def _db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def _opened(ring: Keyring, sealed: dict[str, list[tuple[str, str]]]) -> list[str]:
    return (
        [ring.open(s, rid) for rid, s in sealed["registries"]]
        + [ring.open(s, f"customer:{cid}") for cid, s in sealed["customers"]]
        + [ring.open(s, key_aad(name)) for name, s in sealed["hostnames"]]
    )


async def _add_certified_hostname(store: Store, ring: Keyring, ca: trustme.CA, team: str, hostname: str) -> str:
    """A verified hostname with an uploaded certificate, stored as the vendor API stores it;
    returns its private key (PEM)."""
    found = await store.team_by_name(team)
    assert found is not None
    await store.add_hostname(found.id, hostname, "tok-" + secrets.token_hex(6))
    await store.set_hostname_status(hostname, "verified", None)
    leaf = ca.issue_cert(hostname)
    key = leaf.private_key_pem.bytes().decode()
    cert = leaf.cert_chain_pems[0].bytes().decode()
    await store.set_hostname_certificate(hostname, cert, ring.seal(key, key_aad(hostname)), "2031-01-01T00:00:00+00:00")
    return key


def _drop_old_keys(keys: Path) -> None:
    """What the operator does once rotation is done: only the current key stays in the file."""
    full = Keyring.load(keys)
    Keyring(current=full.current, keys={full.current: full.keys[full.current]}, path=keys).save()


@pytest_asyncio.fixture(scope="module")
async def rotated(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    d = tmp_path_factory.mktemp("keys-cli")
    cfg_path = _write_config(d)
    password = "canary-pw-" + secrets.token_hex(8)
    license_id = "canary-lic-" + secrets.token_hex(12)
    cfg = load(cfg_path, environ={})
    cfg.base_dir = d
    keys = d / "state" / "keys.yaml"
    ring = Keyring.load_or_create(keys)
    store = await open_store(cfg.store, d)
    old = {k: os.environ.get(k) for k in ("KT_REG_PW", "KT_LICENSE")}
    os.environ.update(KT_REG_PW=password, KT_LICENSE=license_id)  # bootstrap reads *_env from os.environ
    try:
        await bootstrap.apply(cfg, store, ring)
        await bootstrap.apply(cfg, store, ring)  # idempotent: still one row each
        tls_key = await _add_certified_hostname(store, ring, trustme.CA(), "acme", HOSTNAME)
        during = _db_bytes(d / "state" / "pullgate.db")  # WAL still open here
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        await store.close()
    db = d / "state" / "pullgate.db"
    before = _sealed(db)
    proc = _cli(cfg_path, "rotate")
    assert proc.returncode == 0, proc.stderr
    assert "re-encrypted 3 secret(s)" in proc.stdout
    for text in (proc.stdout, proc.stderr):
        assert password not in text and license_id not in text and tls_key not in text
    yield Setup(d, cfg_path, db, keys, password, license_id, tls_key, ring.current, before, during)


def test_before_rotation_everything_names_the_first_key(rotated: Setup) -> None:
    ring = Keyring(current=rotated.first_kid, keys={})
    rows = rotated.before["registries"] + rotated.before["customers"] + rotated.before["hostnames"]
    assert [len(rotated.before[kind]) for kind in ("registries", "customers", "hostnames")] == [1, 1, 1]
    assert {ring.key_id_of(s) for _, s in rows} == {rotated.first_kid}


def test_rotation_reseals_under_the_new_current_key(rotated: Setup) -> None:
    ring = Keyring.load(rotated.keys)
    assert ring.current != rotated.first_kid
    assert set(ring.keys) == {rotated.first_kid, ring.current}
    after = _sealed(rotated.db)
    assert {ring.key_id_of(s) for rows in after.values() for _, s in rows} == {ring.current}
    assert [rid for rid, _ in after["registries"]] == [rid for rid, _ in rotated.before["registries"]]
    assert [name for name, _ in after["hostnames"]] == [HOSTNAME]
    assert _opened(ring, after) == [rotated.password, rotated.license_id, rotated.tls_key]
    assert _opened(ring, rotated.before) == [rotated.password, rotated.license_id, rotated.tls_key]
    assert os.stat(rotated.keys).st_mode & 0o077 == 0


def test_sqlite_files_never_hold_plaintext(rotated: Setup) -> None:
    for blob in (rotated.bytes_during_bootstrap, _db_bytes(rotated.db)):
        assert blob  # the file exists and was read
        for secret in (rotated.password, rotated.license_id, rotated.tls_key):
            assert secret.encode() not in blob
            assert base64.b64encode(secret.encode()) not in blob


def test_keys_ls_lists_ids_and_marks_current(rotated: Setup) -> None:
    ring = Keyring.load(rotated.keys)
    proc = _cli(rotated.config, "ls")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(ring.keys)
    current = [line for line in lines if "current" in line]
    assert len(current) == 1 and current[0].split()[0] == ring.current
    for key in ring.keys.values():
        for form in (base64.b64encode(key).decode(), key.hex()):
            assert form not in proc.stdout and form not in proc.stderr


def test_removing_the_old_key_keeps_everything_readable(rotated: Setup, tmp_path: Path) -> None:
    full = Keyring.load(rotated.keys)
    pruned = Keyring(current=full.current, keys={full.current: full.keys[full.current]}, path=tmp_path / "k.yaml")
    pruned.save()
    assert _opened(Keyring.load(pruned.path or tmp_path), _sealed(rotated.db)) == [
        rotated.password,
        rotated.license_id,
        rotated.tls_key,
    ]


def test_missing_current_key_is_named(rotated: Setup, tmp_path: Path) -> None:
    full = Keyring.load(rotated.keys)
    new_kid = full.current
    sealed = _sealed(rotated.db)
    # In process: the error names the key id, never a value.
    only_old = Keyring(current=rotated.first_kid, keys={rotated.first_kid: full.keys[rotated.first_kid]})
    with pytest.raises(SecretError, match=new_kid) as exc:
        _opened(only_old, sealed)
    assert rotated.password not in str(exc.value)
    # Through the CLI, on a copy of the deployment whose keyring lost that key.
    copy = tmp_path / "copy"
    shutil.copytree(rotated.dir / "state", copy / "state")
    cfg = _write_config(copy)
    only_old.path = copy / "state" / "keys.yaml"
    only_old.save()
    proc = _cli(cfg, "rotate")
    assert proc.returncode == 2
    assert new_kid in proc.stderr and "Traceback" not in proc.stderr
    assert _sealed(copy / "state" / "pullgate.db") == sealed  # nothing was rewritten


def _peer_names(port: int, server_name: str, ca: trustme.CA) -> list[str]:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False  # we read which certificate came, whichever it is
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]


def test_hostname_certificate_is_served_after_rotation_without_the_old_key(tmp_path: Path) -> None:
    """Rotate, drop the old key from the file, start `serve`: the custom hostname still gets
    its own certificate over TLS (not the listener's default one)."""
    ca = trustme.CA()
    default = ca.issue_cert("127.0.0.1", "localhost")
    default.cert_chain_pems[0].write_to_path(tmp_path / "default.crt")
    default.private_key_pem.write_to_path(tmp_path / "default.key")
    tls = {"tls_cert_file": str(tmp_path / "default.crt"), "tls_key_file": str(tmp_path / "default.key")}
    server = Pullgate(tmp_path / "pg", [{"name": "acme", "apps": [{"slug": "myapp"}]}], settings={"proxy": tls})

    async def deploy() -> None:
        cfg = load(server.config_path, environ={})
        cfg.base_dir = server.workdir
        ring = Keyring.load_or_create(server.keys_path)
        store = await open_store(cfg.store, server.workdir)
        try:
            await bootstrap.apply(cfg, store, ring)
            await _add_certified_hostname(store, ring, ca, "acme", HOSTNAME)
        finally:
            await store.close()

    asyncio.run(deploy())
    proc = _cli(server.config_path, "rotate")
    assert proc.returncode == 0, proc.stderr
    assert "re-encrypted 1 secret(s)" in proc.stdout
    _drop_old_keys(server.keys_path)
    server.start()  # the host table (and its certificates) is loaded before the listeners open
    try:
        assert _peer_names(server.port, HOSTNAME, ca) == [HOSTNAME]
        assert _peer_names(server.port, "localhost", ca) == ["localhost"]  # the default, for anything else
        assert "not loaded" not in server.log_text()
    finally:
        server.stop()
