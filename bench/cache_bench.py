"""The pull-through cache: a 1 GiB blob cold (miss: fetch, hash, write) and warm (hit), against
the baselines of pull_bench.py (docker-registry direct, nginx with 256 KiB buffers), pullgate's
plain relay (`cache.backend: none`: the floor of a miss) and two bare reference servers serving
the cached file (os.sendfile; 4 MiB read/write); then 20 concurrent cold pulls of one 200 MiB
blob against one. Medians of --repeat runs; pullgate's peak RSS.

CPU per MB of each side of every pull (registry, server, curl): on a machine whose cores the
three share, 1000 * cores / (their sum) bounds the throughput, whatever the code's latency.

Usage: .venv/bin/python bench/cache_bench.py [--blob-mib 1024] [--repeat 5] [--fanout 20]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import statistics
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pull_bench import (
    LICENSE,
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
    curl,
    free_port,
    hwm_kib,
    pull_n,
    push_blob,
    push_image,
    random_chunks,
    start_nginx,
    start_registry,
    wait_status,
)

MiB = 1 << 20
API_TOKEN = "bench-cache-api-token"
BASIC = "Basic " + base64.b64encode(f"LICENSE_ID:{LICENSE}".encode()).decode()

# The two bare servers: the practical limit of a hit on this machine. One request, then exit.
SENDFILE_SERVER = """
import os, socket, sys
path, port = sys.argv[1], int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", port)); print("ready", flush=True)
while True:
    conn, _ = srv.accept(); conn.recv(65536); fd = os.open(path, os.O_RDONLY); size = os.fstat(fd).st_size
    conn.sendall(f"HTTP/1.1 200 OK\\r\\nContent-Length: {size}\\r\\nConnection: close\\r\\n\\r\\n".encode())
    off = 0
    while off < size: off += os.sendfile(conn.fileno(), fd, off, size - off)
    os.close(fd); conn.close()
"""
READ_SERVER = """
import os, socket, sys
path, port = sys.argv[1], int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", port)); print("ready", flush=True)
while True:
    conn, _ = srv.accept(); conn.recv(65536); size = os.path.getsize(path)
    conn.sendall(f"HTTP/1.1 200 OK\\r\\nContent-Length: {size}\\r\\nConnection: close\\r\\n\\r\\n".encode())
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 << 20): conn.sendall(chunk)
    conn.close()
"""


def start_pullgate(
    procs: Procs,
    tmp: Path,
    upstream: int,
    name: str,
    exe: str,
    hit_io: str,
    args: tuple[str, ...] = (),
    cache: dict[str, Any] | None = None,
    egress_allow: tuple[str, ...] = (),
) -> tuple[int, int, Any]:
    """A pullgate with the cache on (filesystem unless `cache` says otherwise); `args` go to
    `serve` (e.g. --workers 2), `egress_allow` adds loopback endpoints (an S3 gateway)."""
    port, admin = free_port(), free_port()
    cfg = tmp / f"{name}.yaml"
    cache_cfg = {"backend": "filesystem", "path": str(tmp / f"{name}-cache"), "hit_io": hit_io, **(cache or {})}
    cfg.write_text(
        json.dumps(
            {
                "proxy": {"listen": f"127.0.0.1:{port}", "hosts": [f"127.0.0.1:{port}"]},
                "admin": {"listen": f"127.0.0.1:{admin}"},
                "store": f"sqlite:///{tmp / (name + '.db')}",
                "keys": {"file": str(tmp / f"{name}-keys.yaml")},
                "upstream": {"egress_allow": [f"127.0.0.1:{upstream}", *egress_allow]},
                "limits": {"min_stream_rate": 0},
                "log": {"access_log": False},
                "cache": cache_cfg,
                "bootstrap": {
                    "teams": [
                        {
                            "name": "bench",
                            "api_tokens": [{"token_env": "BENCH_API_TOKEN"}],
                            "apps": [{"slug": "bench"}],
                            "registries": [
                                {
                                    "slug": "up",
                                    "provider": "other",
                                    "endpoint": f"127.0.0.1:{upstream}",
                                    "url": f"http://127.0.0.1:{upstream}",
                                    "insecure": True,
                                }
                            ],
                            "customers": [{"name": "Bench", "app": "bench", "license_id_env": "BENCH_LICENSE_ID"}],
                        }
                    ]
                },
            }
        )
    )
    log = tmp / f"{name}.log"
    env = {**os.environ, "BENCH_LICENSE_ID": LICENSE, "BENCH_API_TOKEN": API_TOKEN}
    proc = procs.start([exe, "serve", "--config", str(cfg), *args], log, env)
    wait_status(f"http://127.0.0.1:{port}/v2/", 401, proc, log, timeout=60)
    return port, admin, proc


def curl_cpu_seconds() -> float:
    """User + system CPU time of the children waited for so far (the curl clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def purge(admin: int, digest: str) -> None:
    query = urllib.parse.urlencode({"digest": digest})
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}/vendor/v3/cache/entries?{query}",
        method="DELETE",
        headers={"Authorization": API_TOKEN},
    )
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
        json.load(r)


def start_bare(procs: Procs, tmp: Path, script: str, path: Path, name: str) -> int:
    port = free_port()
    log = tmp / f"{name}.log"
    proc = procs.start([sys.executable, "-c", textwrap.dedent(script), str(path), str(port)], log)
    deadline = time.monotonic() + 10
    while not (log.exists() and "ready" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{name} did not start")
        time.sleep(0.05)
    return port


def fanout(url: str, headers: list[str], size: int, n: int, timeout: float) -> float:
    """Seconds until all `n` concurrent pulls are done (each checked for status and size)."""
    errors: list[str] = []

    def one() -> None:
        _, got, code = curl(url, headers, timeout)
        if code != 200 or got != size:
            errors.append(f"HTTP {code}, {got} bytes")

    threads = [threading.Thread(target=one) for _ in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"{url}: {errors[:3]}")
    return time.monotonic() - start


def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    size, fan_size = args.blob_mib * MiB, args.fanout_mib * MiB
    reg_port, reg_proc = start_registry(procs, tmp)
    blobs = push_image(reg_port, size)
    big, small = blobs["big"][0], blobs["small"][0]
    fan_blob, _ = push_blob(reg_port, random_chunks(fan_size, 7))
    ng_port, ng_proc = start_nginx(procs, tmp, reg_port)
    pg = {
        mode: start_pullgate(procs, tmp, reg_port, f"pg-{mode}", args.pullgate, mode) for mode in ("sendfile", "read")
    }
    relay_port, _, relay_proc = start_pullgate(
        procs, tmp, reg_port, "pg-relay", args.pullgate, "read", cache={"backend": "none"}
    )
    auth = [f"Authorization: {BASIC}"]
    base = {mode: f"http://127.0.0.1:{port}/v2/{PROXY_REPO}/blobs/" for mode, (port, _, _) in pg.items()}
    relay_base = f"http://127.0.0.1:{relay_port}/v2/{PROXY_REPO}/blobs/"
    for url in (*base.values(), relay_base):
        pull_n(url + small, auth, MiB, 2, 60)  # warm-up: auth, store, connections
    hwm_small = hwm_kib(pg["sendfile"][2].pid) / 1024

    names = ("direct", "nginx", "relay", "cold", "warm_sendfile", "warm_read")
    speeds: dict[str, list[float]] = {k: [] for k in names}
    sendfile_admin = pg["sendfile"][1]
    for mode in pg:  # each pullgate holds the blob once
        pull_n(base[mode] + big, auth, size, 1, args.pull_timeout)
    cached = tmp / "pg-sendfile-cache" / "blobs" / "sha256" / big[7:9] / big[7:]
    if not cached.exists():
        raise BenchError(f"the cold pull did not cache {big}")
    bare_copy = tmp / "bare-blob"
    shutil.copyfile(cached, bare_copy)  # the bare servers read their own copy: the cache's may be purged
    bare = {
        "bare_sendfile": start_bare(procs, tmp, SENDFILE_SERVER, bare_copy, "bare-sendfile"),
        "bare_read4m": start_bare(procs, tmp, READ_SERVER, bare_copy, "bare-read"),
    }
    for name in bare:
        speeds[name] = []
    targets = {
        "direct": (f"http://127.0.0.1:{reg_port}/v2/{REPO}/blobs/{big}", []),
        "nginx": (f"http://127.0.0.1:{ng_port}/v2/{REPO}/blobs/{big}", []),
        "relay": (relay_base + big, auth),
        "warm_sendfile": (base["sendfile"] + big, auth),
        "warm_read": (base["read"] + big, auth),
        **{name: (f"http://127.0.0.1:{port}/blob", []) for name, port in bare.items()},
    }
    # CPU time the serving process spends per MB: unlike MB/s, hardly moved by other load.
    servers = {
        "direct": [reg_proc.pid],
        "nginx": children(ng_proc.pid),
        "relay": [relay_proc.pid],
        "warm_sendfile": [pg["sendfile"][2].pid],
        "warm_read": [pg["read"][2].pid],
        "cold": [pg["sendfile"][2].pid],
    }
    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    registry_cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    client_cpu: dict[str, float] = dict.fromkeys(servers, 0.0)

    def measured(name: str, url: str, headers: list[str]) -> None:
        pids = servers.get(name, [])
        before, reg_before, client_before = cpu_seconds(pids), cpu_seconds([reg_proc.pid]), curl_cpu_seconds()
        speeds[name] += pull_n(url, headers, size, 1, args.pull_timeout)
        if name in cpu:
            cpu[name] += cpu_seconds(pids) - before
            if reg_proc.pid not in pids:  # direct: the registry is the server, counted once
                registry_cpu[name] += cpu_seconds([reg_proc.pid]) - reg_before
            client_cpu[name] += curl_cpu_seconds() - client_before

    for i in range(args.repeat):
        order = list(targets) if i % 2 == 0 else list(reversed(targets))
        for name in order:
            measured(name, *targets[name])
        purge(sendfile_admin, big)
        measured("cold", base["sendfile"] + big, auth)
    hwm_big = hwm_kib(pg["sendfile"][2].pid) / 1024

    # 20 concurrent cold pulls of one blob against one cold pull (medians of --fan-repeat).
    fan_url = base["sendfile"] + fan_blob
    one, many = [], []
    for _ in range(args.fan_repeat):
        purge(sendfile_admin, fan_blob)
        one.append(fanout(fan_url, auth, fan_size, 1, args.pull_timeout))
        purge(sendfile_admin, fan_blob)
        many.append(fanout(fan_url, auth, fan_size, args.fanout, args.pull_timeout))

    med = {k: round(statistics.median(v), 1) for k, v in speeds.items()}
    per_mb = 1000 / (args.repeat * size / 1e6)
    server_ms, registry_ms, client_ms = (
        {k: round(used * per_mb, 3) for k, used in table.items()} for table in (cpu, registry_cpu, client_cpu)
    )
    cores = os.cpu_count() or 1
    bound = {k: round(1000 * cores / total) for k in cpu if (total := server_ms[k] + registry_ms[k] + client_ms[k])}
    best_bare = max(med["bare_sendfile"], med["bare_read4m"])
    best_warm = max(med["warm_sendfile"], med["warm_read"])
    return {
        "blob_bytes": size,
        "repeat": args.repeat,
        "mb_per_s": med,
        "mb_per_s_all": {k: [round(x, 1) for x in v] for k, v in speeds.items()},
        "server_cpu_ms_per_mb": server_ms,
        "registry_cpu_ms_per_mb": registry_ms,
        "client_cpu_ms_per_mb": client_ms,
        "cores": cores,
        "cpu_bound_mb_per_s": bound,
        "ratio_cold_nginx": round(med["cold"] / med["nginx"], 3),
        "ratio_relay_nginx": round(med["relay"] / med["nginx"], 3),
        "ratio_warm_best_bare": round(best_warm / best_bare, 3),
        "ratio_warm_direct": round(best_warm / med["direct"], 3),
        "faster_hit_io": "sendfile" if med["warm_sendfile"] >= med["warm_read"] else "read",
        "fanout": args.fanout,
        "fanout_bytes": fan_size,
        "fanout_one_s": round(statistics.median(one), 2),
        "fanout_many_s": round(statistics.median(many), 2),
        "ratio_fanout": round(statistics.median(many) / statistics.median(one), 3),
        "pullgate_hwm_small_mib": round(hwm_small, 1),
        "pullgate_hwm_big_mib": round(hwm_big, 1),
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"\nblob {r['blob_bytes'] // MiB} MiB, median of {r['repeat']} (MB/s = 10^6 B/s)")
    for name, value in r["mb_per_s"].items():
        print(f"  {name:<15}{value:>10.1f}  {r['mb_per_s_all'][name]}")
    print(f"CPU ms/MB of each side (registry + server + curl), and the bound on {r['cores']} cores")
    for name, server in r["server_cpu_ms_per_mb"].items():
        registry, client = r["registry_cpu_ms_per_mb"][name], r["client_cpu_ms_per_mb"][name]
        total = registry + server + client
        print(
            f"  {name:<15}{registry:>7.3f} +{server:>7.3f} +{client:>7.3f} ={total:>7.3f}"
            f"  -> {r['cpu_bound_mb_per_s'].get(name, '-')} MB/s"
        )
    print(f"cold/nginx {r['ratio_cold_nginx']} (target >= 0.8), relay/nginx {r['ratio_relay_nginx']}")
    print(
        f"warm/faster bare {r['ratio_warm_best_bare']} (target >= 0.95), warm/direct {r['ratio_warm_direct']} (>= 0.9)"
    )
    print(f"faster hit path here: {r['faster_hit_io']}")
    print(
        f"{r['fanout']} concurrent cold pulls of {r['fanout_bytes'] // MiB} MiB: {r['fanout_many_s']}s, "
        f"one: {r['fanout_one_s']}s, ratio {r['ratio_fanout']} (target <= 1.5)"
    )
    print(
        f"pullgate VmHWM: after 1 MiB pulls {r['pullgate_hwm_small_mib']} MiB, "
        f"after all {r['pullgate_hwm_big_mib']} MiB"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blob-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fanout", type=int, default=20)
    ap.add_argument("--fanout-mib", type=int, default=200)
    ap.add_argument("--fan-repeat", type=int, default=3)
    ap.add_argument("--pullgate", default=str(VENV_BIN / "pullgate"), help="executable")
    ap.add_argument("--pull-timeout", type=float, default=600, help="seconds per pull")
    ap.add_argument("--budget", type=int, default=3600, help="seconds for the whole run")
    args = ap.parse_args()
    tools = {"docker-registry": REGISTRY, "nginx": NGINX, "curl": shutil.which("curl")}
    return bench_main(args, tools, "pullgate-cache-bench-", run, print_table)[0]


if __name__ == "__main__":
    sys.exit(main())
