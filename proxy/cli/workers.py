"""`pullgate serve --workers N`: a supervisor and N full server processes on one host.

The supervisor does the start-up jobs once (keyring, schema migrations, bootstrap:
proxy.app.startup_jobs), then starts N workers, each `pullgate serve` with a
hidden `--worker-index`, each binding the proxy and admin ports with SO_REUSEPORT
so the kernel spreads connections over them. It serves nothing itself.

- A worker that exits while the supervisor is not stopping is restarted after a
  short back-off; more than MAX_RESTARTS exits within RESTART_WINDOW seconds means
  something is wrong with the host or the config, not the worker: the supervisor
  stops the others and exits 1.
- SIGTERM or SIGINT is forwarded to every worker as SIGTERM (each drains its
  streams for up to `proxy.shutdown_grace_seconds`); a worker still running after
  that grace and KILL_AFTER more seconds is killed. Exit status 0 after a clean stop.
- A worker whose supervisor disappears stops by itself (proxy.app._watch_parent).
- Metrics: PROMETHEUS_MULTIPROC_DIR is set for the workers (a fresh temporary
  directory, removed at exit; or the operator's, emptied at start), so /metrics
  on any worker shows the totals of all (proxy.metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from prometheus_client import multiprocess as prometheus_multiprocess

from proxy.app import startup_jobs
from proxy.config import Config
from proxy.metrics import MULTIPROC_ENV

log = logging.getLogger("pullgate.supervisor")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
KILL_AFTER = 10.0


class Supervisor:
    def __init__(self, cfg: Config, config_path: str | None, count: int, metrics_dir: Path) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.count = count
        self.metrics_dir = metrics_dir
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.exits: deque[float] = deque()  # when workers died unasked, within the window
        self.stopping = asyncio.Event()
        self.failed = False

    def argv(self, index: int) -> list[str]:
        argv = [sys.executable, "-m", "proxy", "serve", "--workers", str(self.count), "--worker-index", str(index)]
        if self.config_path:
            argv += ["--config", self.config_path]
        return argv

    async def start(self, index: int) -> None:
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        # stdin closed; stdout and stderr are ours: the workers' JSON lines go where ours go.
        proc = await asyncio.create_subprocess_exec(*self.argv(index), env=env, stdin=asyncio.subprocess.DEVNULL)
        self.procs[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)

    async def keep(self, index: int) -> None:
        """Run worker `index` until the supervisor stops, restarting it when it dies."""
        backoff = BACKOFF_FIRST
        while True:
            proc = self.procs[index]
            code = await proc.wait()
            # Its live gauges (streams, connections in flight) no longer count.
            prometheus_multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))
            if self.stopping.is_set():
                return
            now = time.monotonic()
            self.exits.append(now)
            while self.exits and self.exits[0] < now - RESTART_WINDOW:
                self.exits.popleft()
            if len(self.exits) > MAX_RESTARTS:
                log.error(
                    "worker %d exited (status %s); %d exits in %.0fs: giving up",
                    index,
                    code,
                    len(self.exits),
                    RESTART_WINDOW,
                )
                self.failed = True
                self.stopping.set()
                return
            log.warning("worker %d (pid %d) exited with status %s; restarting in %.1fs", index, proc.pid, code, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            if self.stopping.is_set():
                return
            backoff = min(backoff * 2, BACKOFF_MAX)
            await self.start(index)

    async def stop_all(self) -> None:
        running = [p for p in self.procs.values() if p.returncode is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = self.cfg.proxy.shutdown_grace_seconds + KILL_AFTER
        waits = [asyncio.create_task(p.wait()) for p in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=deadline)
            if late:
                log.error("%d worker(s) still running %.0fs after SIGTERM: killing them", len(late), deadline)
                for p in running:
                    if p.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            p.kill()
                await asyncio.wait(waits, timeout=5)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await startup_jobs(self.cfg)
        if self.stopping.is_set():  # told to stop while migrating: start nothing
            return 0
        keepers: list[asyncio.Task[None]] = []
        try:
            for i in range(self.count):
                await self.start(i)
            keepers = [asyncio.create_task(self.keep(i)) for i in range(self.count)]
            log.info("supervising %d workers (pid %d)", self.count, os.getpid())
            await self.stopping.wait()
        finally:
            await self.stop_all()
        for k in keepers:
            k.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        log.info("stopped all workers")
        return 1 if self.failed else 0


def prepare_metrics_dir() -> tuple[Path, bool]:
    """(the directory, whether it is ours to remove). The operator's own is emptied: files
    of a previous run would be added to this run's totals."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="pullgate-metrics-")), True


def supervise(cfg: Config, config_path: str | None, count: int) -> int:
    metrics_dir, owned = prepare_metrics_dir()
    try:
        return asyncio.run(Supervisor(cfg, config_path, count, metrics_dir).run())
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)
