"""Run pullgate itself, as an operator would: `pullgate serve --config FILE`."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import ManagedProcess, free_port, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]


class Pullgate:
    def __init__(
        self,
        workdir: Path,
        teams: list[dict[str, Any]],
        env: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        name: str = "pullgate",
        args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.args = list(args or [])  # more `serve` arguments, e.g. ["--workers", "2"]
        self.root = REPO_ROOT  # the checkout whose `proxy` runs (python -m proxy from there)
        workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = workdir / "pullgate.db"
        self.keys_path = workdir / "keys.yaml"
        self.config_path = workdir / "config.yaml"
        self._teams, self._settings = teams, settings
        self._configure()
        self.env = {**os.environ, **(env or {})}
        self.proc: ManagedProcess | None = None

    def _configure(self) -> None:
        """Free loopback ports, and the config file that names them."""
        self.port = free_port()
        self.admin_port = free_port()
        config: dict[str, Any] = {
            "proxy": {
                "listen": f"127.0.0.1:{self.port}",
                "hosts": [self.host, f"localhost:{self.port}"],
                "shutdown_grace_seconds": 10,
            },
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "store": f"sqlite://{self.db_path}" if self.db_path.is_absolute() else f"sqlite:{self.db_path}",
            "keys": {"file": str(self.keys_path)},
            "upstream": {
                "connect_timeout": 5,
                "first_byte_timeout": 20,
                "idle_timeout": 10,
                "retries": 1,
                # The test registries listen on loopback, which the egress policy refuses by default.
                "egress_allow": ["127.0.0.0/8"],
            },
            # Off unless a test turns it on: the other tests count upstream requests.
            "cache": {"backend": "none", "path": str(self.workdir / "cache")},
            "bootstrap": {"teams": self._teams},
        }
        for section, values in (self._settings or {}).items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:  # a top-level scalar, such as `store`
                config[section] = values
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, attempts: int = 3) -> Pullgate:
        argv = [sys.executable, "-m", "proxy", "serve", "--config", str(self.config_path), *self.args]
        for attempt in range(1, attempts + 1):
            self.proc = ManagedProcess(argv, self.workdir, self.name, env=self.env, cwd=self.root)
            try:
                # Both listeners are up before the admin one answers (and it is plain HTTP
                # even when the proxy listener speaks TLS).
                wait_http(f"{self.admin_url}/healthz", timeout=20, proc=self.proc)
                return self
            except RuntimeError as exc:
                # free_port's race: another process took a port between the choice and the
                # bind (an outgoing connection's ephemeral port). New ports, once more.
                if "address already in use" not in str(exc) or attempt == attempts:
                    raise
                self._configure()
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.proc.wait(timeout)

    def stop(self) -> int:
        return self.proc.stop(timeout=15) if self.proc else 0

    def set_license_status(self, license_id: str, status: str) -> None:
        """What the vendor API will do; here straight on the SQLite file (WAL allows it)."""
        h = hashlib.sha256(license_id.encode()).hexdigest()
        with sqlite3.connect(self.db_path, timeout=10) as db:
            cur = db.execute("UPDATE customers SET status = ? WHERE license_hash = ?", (status, h))
            assert cur.rowcount == 1, "no such license"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def tcp_peers(self) -> list[tuple[str, int]]:
        """Remote (host, port) of this process's established TCP sockets (from /proc)."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        peers = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if parts[3] == "01" and parts[9] in inodes:  # 01 = ESTABLISHED
                    addr, port = parts[2].split(":")
                    peers.append((addr, int(port, 16)))
        return peers

    def wait_until(self, predicate: Any, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()
