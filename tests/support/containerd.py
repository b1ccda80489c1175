"""A private containerd for tests: its own root, state, sockets and config, never the system's.

Debian's `containerd` package (containerd + ctr). The daemon runs under `timeout`,
so it stops by itself even if pytest is killed; `stop()` ends it (SIGTERM, then
SIGKILL) and removes its directory. CRI is disabled (no Kubernetes here), and
the debug and metrics listeners are off: the only listeners are two unix sockets
in a private temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.procs import ManagedProcess

CONTAINERD = "containerd"
CTR = "ctr"
NAMESPACE = "pullgate-test"
LIFETIME = 600  # seconds: the daemon's hard upper bound, whatever happens to pytest


def available() -> str | None:
    """None when containerd and ctr can be run, else why not."""
    missing = [p for p in (CONTAINERD, CTR) if shutil.which(p) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian package `containerd`)"
    if os.geteuid() != 0:
        return "containerd needs root (its content store, snapshots and mounts)"
    return None


def _env() -> dict[str, str]:
    # Only loopback is contacted: no proxy settings from the caller's environment.
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


class Containerd:
    """`containerd --config <dir>/config.toml`, talking on `<dir>/c.sock`."""

    def __init__(self, snapshotter: str = "overlayfs") -> None:
        # Short path: a unix socket path must stay under ~108 bytes, pytest's tmp_path may not.
        self.dir = Path(tempfile.mkdtemp(prefix="pg-ctrd-"))
        self.address = str(self.dir / "c.sock")
        self.snapshotter = snapshotter
        self.config = self.dir / "config.toml"
        self.config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.dir / "root"}"',
                    f'state = "{self.dir / "state"}"',
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f'  address = "{self.address}"',
                    "[ttrpc]",
                    f'  address = "{self.dir / "t.sock"}"',
                    "[debug]",
                    '  address = ""',
                    "[metrics]",
                    '  address = ""',
                    "",
                ]
            )
        )
        self.proc: ManagedProcess | None = None

    def start(self, timeout: float = 20) -> Containerd:
        self.proc = ManagedProcess(
            ["timeout", str(LIFETIME), CONTAINERD, "--config", str(self.config)],
            self.dir,
            "containerd",
            env=_env(),
        )
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                log = self.proc.log_text()[-4000:]
                self.stop()
                raise RuntimeError(f"containerd exited early:\n{log}")
            if Path(self.address).exists():
                res = self.ctr(["version"], timeout=5, namespace=None)
                if res.returncode == 0:
                    return self
            if time.monotonic() > deadline:
                log = self.proc.log_text()[-4000:]
                self.stop()
                raise TimeoutError(f"containerd not ready in {timeout}s:\n{log}")
            time.sleep(0.1)

    def ctr(
        self, args: Sequence[str], timeout: float = 120, namespace: str | None = NAMESPACE
    ) -> subprocess.CompletedProcess[str]:
        argv = [CTR, "--address", self.address]
        if namespace is not None:
            argv += ["--namespace", namespace]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, env=_env())

    def ctr_bytes(self, args: Sequence[str], timeout: float = 60) -> bytes:
        """stdout of a ctr command that must succeed, as bytes (`content get`)."""
        res = subprocess.run(
            [CTR, "--address", self.address, "--namespace", NAMESPACE, *args],
            capture_output=True,
            timeout=timeout,
            env=_env(),
        )
        if res.returncode:
            raise AssertionError(f"ctr {' '.join(args)}: {res.stderr.decode(errors='replace')}")
        return res.stdout

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
        # Unpacking mounts only for the length of one apply; should anything remain
        # mounted under our directory, unmount it before removing the directory.
        for mountpoint in reversed(self.mounts()):
            subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def mounts(self) -> list[str]:
        """Mount points under this daemon's directory, from /proc/self/mountinfo."""
        prefix = str(self.dir) + "/"
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        points = [line.split()[4].replace("\\040", " ") for line in lines]
        return [p for p in points if p.startswith(prefix)]

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
