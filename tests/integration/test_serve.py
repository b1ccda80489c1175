"""`pullgate serve` as an operator runs it: first start, config errors, SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import basic
from tests.support.poll import apoll
from tests.support.pullgate import REPO_ROOT, Pullgate
from tests.support.registry import Registry

LICENSE = "lic-serve-0123456789abcdef0123"


def _teams(upstream: Registry) -> list[dict]:
    return [
        {
            "name": "serve",
            "apps": [{"slug": "serve"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.test", "url": upstream.url, "insecure": True}
            ],
            "customers": [{"name": "C", "app": "serve", "license_id_env": "SERVE_LICENSE"}],
        }
    ]


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def test_sigterm_lets_running_streams_finish(tmp_path: Path, upstream_anon: Registry):
    server = Pullgate(tmp_path, _teams(upstream_anon), env={"SERVE_LICENSE": LICENSE}).start()
    try:
        log = server.log_text()
        assert "created a new master keyring" in log
        assert (server.keys_path.stat().st_mode & 0o777) == 0o600
        img = upstream_anon.images["big"]
        digest, size = img.blobs[-1]
        url = f"{server.url}/v2/proxy/serve/up/{img.repo}/blobs/{digest}"
        h = hashlib.sha256()
        got = 0
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"Authorization": basic(LICENSE)}) as r:
                assert r.status == 200
                first = await r.content.readexactly(1 << 20)
                h.update(first)
                got += len(first)
                server.terminate()
                # No new connections while the running stream drains ...
                await apoll(lambda: asyncio.to_thread(_refuses_connections, server.port), 10, "listener closed")
                # ... which it does, slowly and completely.
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    got += len(chunk)
                    await asyncio.sleep(0.005)
        assert got == size
        assert "sha256:" + h.hexdigest() == digest
        assert await asyncio.to_thread(server.wait, 20) == 0
        lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
        assert any(line["msg"].startswith("stopping") for line in lines)
        assert any(line["msg"] == "access" and line.get("route") == "blobs" and line["status"] == 200 for line in lines)
        assert LICENSE not in server.log_text()
    finally:
        server.stop()


def test_second_start_reuses_store_and_keys(tmp_path: Path, upstream_anon: Registry):
    env = {"SERVE_LICENSE": LICENSE}
    first = Pullgate(tmp_path, _teams(upstream_anon), env=env).start()
    first.stop()
    keys = first.keys_path.read_bytes()
    second = Pullgate(tmp_path, _teams(upstream_anon), env=env, name="second").start()
    try:
        assert second.keys_path.read_bytes() == keys
        assert "created a new master keyring" not in second.log_text()
        # Bootstrap is idempotent: still one customer, one registry.
        import sqlite3

        with sqlite3.connect(second.db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 1
            assert db.execute("SELECT COUNT(*) FROM registries").fetchone()[0] == 1
            raw = b"".join(p.read_bytes() for p in tmp_path.glob("pullgate.db*"))
        assert LICENSE.encode() not in raw
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("config", "env", "needle"),
    [
        ({"proxy": {"lisen": "x"}}, {}, "proxy.lisen: unknown key"),
        ({"upstream": {"idle_timeout": "soon"}}, {}, "upstream.idle_timeout: must be a number"),
        ({}, {"PULLGATE_ADMIN_LISTEN": "nowhere"}, "admin.listen"),
        (
            {
                "bootstrap": {
                    "teams": [
                        {
                            "name": "t",
                            "apps": [{"slug": "a"}],
                            "customers": [{"name": "c", "app": "a", "license_id_env": "NOT_SET_ANYWHERE"}],
                        }
                    ]
                }
            },
            {},
            "NOT_SET_ANYWHERE",
        ),
    ],
)
def test_bad_config_stops_the_start_naming_the_key(tmp_path: Path, config: dict, env: dict, needle: str):
    cfg = tmp_path / "bad.yaml"
    base = {"store": f"sqlite://{tmp_path}/db.sqlite", "keys": {"file": str(tmp_path / "keys.yaml")}}
    cfg.write_text(json.dumps(base | config))
    res = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
    )
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


async def test_key_rotation_reaches_a_running_server(tmp_path: Path, upstream_basic: Registry):
    teams = _teams(upstream_basic)
    teams[0]["registries"][0].update(username="vendor", password_env="SERVE_UPSTREAM_PW")
    env = {"SERVE_LICENSE": LICENSE, "SERVE_UPSTREAM_PW": upstream_basic.password or ""}
    server = Pullgate(tmp_path, teams, env=env).start()
    try:
        img = upstream_basic.images["oci"]
        url = f"{server.url}/v2/proxy/serve/up/{img.repo}/manifests/{img.digest}"
        headers = {"Authorization": basic(LICENSE), "Accept": img.media_type}
        res = subprocess.run(
            [sys.executable, "-m", "proxy", "keys", "rotate", "--config", str(server.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO_ROOT,
            env=server.env,
        )
        assert res.returncode == 0, res.stderr
        assert "re-encrypted 2 secret(s)" in res.stdout
        # The stored password is now sealed under a key this process loads only from the file
        # (its keyring poll, every 2 s).
        await apoll(lambda: "master keyring reloaded" in server.log_text(), 10, "the keyring reloaded")
        async with aiohttp.ClientSession() as s:
            # A new registry connection needs the password: use a repository not yet authorised.
            async with s.get(url, headers=headers) as r:
                assert r.status == 200
                assert await r.read() == img.manifest
        assert "master keyring reloaded" in server.log_text()
        assert (upstream_basic.password or "-") not in server.log_text()
    finally:
        server.stop()
