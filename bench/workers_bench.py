"""Cache hits under concurrency: 8 pulls at once of cached 200 MiB blobs through
`pullgate serve --workers 2` and `--workers 1` (filesystem cache, warm), against nginx
(256 KiB buffers) in front of the docker-registry and the registry itself, in one run.

Usage: .venv/bin/python bench/workers_bench.py [--clients 8] [--blob-mib 200] [--blobs 1] [--repeat 5]
See bench/README.md for what it prints.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cache_bench import BASIC, start_pullgate
from pull_bench import (
    NGINX,
    PROXY_REPO,
    REGISTRY,
    REPO,
    VENV_BIN,
    BenchError,
    Procs,
    bench_main,
    children,
    cpu_seconds,
    push_blob,
    random_chunks,
    start_nginx,
    start_registry,
)

MiB = 1 << 20
RECV = 1 * MiB


def read_one(port: int, path: str, headers: dict[str, str], size: int, timeout: float) -> None:
    """GET on a raw socket, body read with recv_into one 1 MiB buffer: a client that costs
    the kernel's copy and little else. Raises unless 200 with exactly `size` bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Connection: close\r\n\r\n".encode())
        buf = bytearray(RECV)
        view = memoryview(buf)
        got = b""
        while b"\r\n\r\n" not in got:
            n = s.recv_into(view)
            if not n:
                raise BenchError(f"{path}: closed before the headers")
            got += bytes(view[:n])
        header, _, rest = got.partition(b"\r\n\r\n")
        status = header.split(b" ", 2)[1]
        if status != b"200":
            raise BenchError(f"{path}: HTTP {status.decode()}")
        body = len(rest)
        while body < size:
            n = s.recv_into(view)
            if not n:
                break
            body += n
        if body != size:
            raise BenchError(f"{path}: {body} bytes, expected {size}")


def concurrent(port: int, paths: list[str], headers: dict[str, str], size: int, timeout: float) -> float:
    """Seconds until every path (one connection each, all at once) is read whole."""
    errors: list[BaseException] = []

    def one(path: str) -> None:
        try:
            read_one(port, path, headers, size, timeout)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    if errors or any(t.is_alive() for t in threads):
        raise BenchError(f"port {port}: {errors[:3] or 'a pull did not finish'}")
    return time.monotonic() - start


def tree(pid: int) -> list[int]:
    """A process and its children (the supervisor's workers; nginx's worker)."""
    return [pid, *children(pid)]


def cache_marks(db: Path) -> list[str]:
    """The pull log's hit/miss mark of every blob pull, oldest first."""
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute("SELECT cache FROM pull_logs WHERE action = 'blob' ORDER BY time")
        return [str(r[0]) for r in rows]


def warm(port: int, paths: list[str], auth: dict[str, str], size: int, args: argparse.Namespace, db: Path) -> int:
    """Rounds of `--clients` pulls (each blob by every client in turn) until a round is all
    hits in the pull log (written each second); the number of rounds it took."""
    for rounds in range(1, 9):
        before = len(cache_marks(db))
        for shift in range(args.blobs):
            concurrent(port, [paths[(i + shift) % len(paths)] for i in range(args.clients)], auth, size, 300)
        want = before + args.clients * args.blobs
        deadline = time.monotonic() + 15
        while len(rows := cache_marks(db)) < want:
            if time.monotonic() > deadline:
                raise BenchError(f"port {port}: the pull log did not show the warm-up round")
            time.sleep(0.2)
        if set(rows[before:]) == {"hit"}:
            return rounds
    raise BenchError(f"port {port}: still misses after 8 warm-up rounds")


def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    size = args.blob_mib * MiB
    reg_port, reg_proc = start_registry(procs, tmp)
    digests = [push_blob(reg_port, random_chunks(size, 100 + i))[0] for i in range(args.blobs)]
    ng_port, ng_proc = start_nginx(procs, tmp, reg_port)
    pg: dict[str, tuple[int, Any]] = {}
    for workers in (1, 2):
        name = f"pg-workers{workers}"
        port, _, proc = start_pullgate(
            procs, tmp, reg_port, name, args.pullgate, args.hit_io, ("--workers", str(workers))
        )
        pg[name] = (port, proc)
    auth = {"Authorization": BASIC}
    direct_paths = [f"/v2/{REPO}/blobs/{d}" for d in digests]
    proxy_paths = [f"/v2/{PROXY_REPO}/blobs/{d}" for d in digests]
    # Warm: each blob once (the fill), then unmeasured rounds until one is all hits. Each
    # worker of `--workers 2` has its own index: a blob the other worker filled is a miss
    # (fetched again) the first time this one is asked for it.
    warm_rounds = {}
    for name, (port, _) in pg.items():
        for path in proxy_paths:
            concurrent(port, [path], auth, size, args.pull_timeout)
        warm_rounds[name] = warm(port, proxy_paths, auth, size, args, tmp / f"{name}.db")

    targets: dict[str, tuple[int, list[str], dict[str, str], list[int]]] = {
        "direct": (reg_port, direct_paths, {}, [reg_proc.pid]),
        "nginx": (ng_port, direct_paths, {}, children(ng_proc.pid)),
        **{name: (port, proxy_paths, auth, tree(proc.pid)) for name, (port, proc) in pg.items()},
    }
    mbs: dict[str, list[float]] = {name: [] for name in targets}
    server_cpu = dict.fromkeys(targets, 0.0)
    client_cpu = dict.fromkeys(targets, 0.0)
    moved = args.clients * size * args.repeat / 1e6  # MB per target over the run
    load = []
    for i in range(args.repeat):
        order = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in order:
            port, paths, headers, pids = targets[name]
            wanted = [paths[c % len(paths)] for c in range(args.clients)]
            s0, c0 = cpu_seconds(pids), time.process_time()
            seconds = concurrent(port, wanted, headers, size, args.pull_timeout)
            client_cpu[name] += time.process_time() - c0
            server_cpu[name] += cpu_seconds(pids) - s0
            mbs[name].append(args.clients * size / 1e6 / seconds)
        load.append(os.getloadavg()[0])

    med = {k: round(statistics.median(v), 1) for k, v in mbs.items()}
    result: dict[str, Any] = {
        "clients": args.clients,
        "blob_bytes": size,
        "blobs": args.blobs,
        "repeat": args.repeat,
        "hit_io": args.hit_io,
        "mb_per_s": med,
        "mb_per_s_all": {k: [round(x, 1) for x in v] for k, v in mbs.items()},
        "server_cpu_ms_per_mb": {k: round(1000 * v / moved, 3) for k, v in server_cpu.items()},
        "client_cpu_ms_per_mb": {k: round(1000 * v / moved, 3) for k, v in client_cpu.items()},
        # CPU cores busy while serving: (server CPU s) / (wall s); 2.0 is the whole machine.
        "server_cores": {
            k: round(server_cpu[k] / sum(args.clients * size / 1e6 / x for x in mbs[k]), 2) for k in targets
        },
        "client_cores": {
            k: round(client_cpu[k] / sum(args.clients * size / 1e6 / x for x in mbs[k]), 2) for k in targets
        },
        "ratio_workers2_workers1": round(med["pg-workers2"] / med["pg-workers1"], 3),
        "ratio_workers1_nginx": round(med["pg-workers1"] / med["nginx"], 3),
        "ratio_workers2_nginx": round(med["pg-workers2"] / med["nginx"], 3),
        "loadavg": [round(x, 2) for x in load],
        "warm_rounds": warm_rounds,
    }
    # Every measured pull must have been a hit: the pull log, written once each pullgate stopped.
    marks = {}
    measured = args.clients * args.repeat
    for name, (_, proc) in pg.items():
        procs.stop(proc)
        rows = cache_marks(tmp / f"{name}.db")
        marks[name] = {mark: rows.count(mark) for mark in sorted(set(rows))}
        if len(rows) < measured or set(rows[-measured:]) != {"hit"}:
            raise BenchError(f"{name}: the measured pulls were not all hits ({marks[name]})")
    result["pull_log_cache_marks"] = marks
    return result


def print_table(r: dict[str, Any]) -> None:
    print(
        f"\n{r['clients']} concurrent pulls of {r['blob_bytes'] // MiB} MiB ({r['blobs']} distinct blob(s)), "
        f"hit_io {r['hit_io']}, median of {r['repeat']} (MB = 10^6 B)"
    )
    print(f"{'path':<13}{'MB/s':>9}{'srv ms/MB':>11}{'cli ms/MB':>11}{'srv cores':>11}{'cli cores':>11}  runs")
    for name, value in r["mb_per_s"].items():
        print(
            f"{name:<13}{value:>9.1f}{r['server_cpu_ms_per_mb'][name]:>11.3f}{r['client_cpu_ms_per_mb'][name]:>11.3f}"
            f"{r['server_cores'][name]:>11.2f}{r['client_cores'][name]:>11.2f}  {r['mb_per_s_all'][name]}"
        )
    print(
        f"workers2/workers1 {r['ratio_workers2_workers1']} (target >= 1.6); "
        f"workers1/nginx {r['ratio_workers1_nginx']}; workers2/nginx {r['ratio_workers2_nginx']}"
    )
    print(f"pull log cache marks (blob rows): {r['pull_log_cache_marks']}; warm-up rounds {r['warm_rounds']}")
    print(f"loadavg {r['loadavg']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent pulls (one connection each)")
    ap.add_argument("--blob-mib", type=int, default=200)
    ap.add_argument("--blobs", type=int, default=1, help="distinct blobs; client i pulls blob i %% N")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hit-io", choices=("sendfile", "read"), default="sendfile")
    ap.add_argument("--pullgate", default=str(VENV_BIN / "pullgate"), help="executable")
    ap.add_argument("--pull-timeout", type=float, default=300, help="seconds per pull")
    ap.add_argument("--budget", type=int, default=1800, help="seconds for the whole run")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.blobs <= args.clients or not 1 <= args.repeat <= 20:
        ap.error("--clients 1..64, --blobs 1..clients, --repeat 1..20")
    tools = {"docker-registry": REGISTRY, "nginx": NGINX}
    return bench_main(args, tools, "pullgate-workers-bench-", run, print_table)[0]


if __name__ == "__main__":
    sys.exit(main())
