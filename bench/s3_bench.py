"""The S3 cache (`cache.backend: s3`) on versitygw: a cached 1 GiB blob through pullgate vs a
direct presigned GET of the same object from versitygw, vs the same GET through nginx and
HAProxy (with splice) in front of versitygw (what any proxy in the path costs here), and with
`cache.s3.redirect` (307 to a presigned GET, followed by curl -L) the proxy's CPU per GiB
served vs the streaming path's.

Usage: .venv/bin/python bench/s3_bench.py [--blob-mib 1024] [--repeat 3] [--redirects 300]
See bench/README.md for what it prints.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cache_bench import BASIC, start_pullgate
from pull_bench import (
    PROXY_REPO,
    REGISTRY,
    VENV_BIN,
    BenchError,
    Procs,
    bench_main,
    children,
    cpu_seconds,
    free_port,
    push_image,
    start_nginx,
    start_registry,
    wait_status,
)
from workers_bench import cache_marks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' S3 gateway, pullgate's client

from proxy.cache.s3client import S3Client, S3Endpoint
from proxy.cache.s3store import object_key
from tests.support import gotools
from tests.support.s3gw import REGION, S3Gateway

MiB = 1 << 20
GiB = 1 << 30
REFERENCES = ("nginx_in_front", "haproxy_splice")
UNSIGNED = 403  # versitygw's answer to an unsigned GET /: the reference proxies are up


HAPROXY = "/usr/sbin/haproxy"


def curl(url: str, headers: list[str], timeout: float, follow: bool = False) -> tuple[float, int, int, int, float]:
    """MB/s, bytes, final status, redirects followed, curl's own CPU seconds."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout))]
    argv += ["-w", "%{speed_download} %{size_download} %{http_code} %{num_redirects}"]
    if follow:
        argv.append("-L")  # curl does not send -H Authorization on to another host:port
    for h in headers:
        argv += ["-H", h]
    with subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        out = proc.stdout.read()  # curl's -w line, at its exit (its --max-time bounds the wait)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it: its CPU, which /proc loses at exit
        proc.returncode = os.waitstatus_to_exitcode(status)
    speed, size, code, redirects = out.split()
    return float(speed) / 1e6, int(size), int(code), int(redirects), usage.ru_utime + usage.ru_stime


def start_haproxy(procs: Procs, tmp: Path, upstream: int, host: str) -> tuple[int, subprocess.Popen[bytes]]:
    """HAProxy in front of `upstream`, splicing the response (socket -> pipe -> socket, as the
    relay does), 256 KiB buffers, `host` sent as Host; threads as many as cores (its default)."""
    port, root = free_port(), tmp / "haproxy"
    root.mkdir(parents=True, exist_ok=True)
    (root / "haproxy.cfg").write_text(f"""global
    maxconn 64
    tune.bufsize 262144
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    option splice-response
frontend bench
    bind 127.0.0.1:{port}
    http-request set-header Host {host}
    default_backend s3
backend s3
    server gw 127.0.0.1:{upstream}
""")
    log = root / "stderr.log"
    proc = procs.start([HAPROXY, "-db", "-f", str(root / "haproxy.cfg")], log)
    wait_status(f"http://127.0.0.1:{port}/", UNSIGNED, proc, log)
    return port, proc


def spy_on(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (raw collapsed stacks, all threads, idle frames left out) on `pid` until spy_stop."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(VENV_BIN / "py-spy"), "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached before the load starts (a bench, not a test: no poll for readiness)
    return spy


def spy_stop(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)


def baseline_exe(tmp: Path, checkout: Path) -> Path:
    """A `pullgate` that runs another checkout's code (e.g. /work/main) with this venv."""
    exe = tmp / "baseline-pullgate"
    exe.write_text(f'#!/bin/sh\ncd {shlex.quote(str(checkout))} && exec {shlex.quote(sys.executable)} -m proxy "$@"\n')
    exe.chmod(0o755)
    return exe


def first_status(port: int, path: str) -> int:
    """The status of a blob GET, the body left unread (the connection is closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": BASIC})
        return conn.getresponse().status
    finally:
        conn.close()


def redirects_only(port: int, path: str, n: int) -> float:
    """`n` blob GETs on one keep-alive connection, each answered 307 and not followed; seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    for _ in range(n):
        conn.request("GET", path, headers={"Authorization": BASIC})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 307 or "X-Amz-Signature=" not in resp.headers.get("Location", ""):
            raise BenchError(f"redirect: HTTP {resp.status}")
    conn.close()
    return time.monotonic() - start


def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    size = args.blob_mib * MiB
    gw = S3Gateway(gotools.build(gotools.VERSITYGW), root=tmp / "s3gw")
    try:
        return measure(args, procs, tmp, gw, size)
    finally:
        gw.stop()


def measure(args: argparse.Namespace, procs: Procs, tmp: Path, gw: S3Gateway, size: int) -> dict[str, Any]:
    bucket = gw.create_bucket(f"bench-{secrets.token_hex(4)}")
    reg_port, _ = start_registry(procs, tmp)
    big = push_image(reg_port, size)["big"][0]
    os.environ["BENCH_S3_SECRET"] = gw.secret_key  # the pullgates' env is ours
    s3 = {
        "bucket": bucket,
        "endpoint_url": gw.url,
        "region": REGION,
        "access_key_id": gw.access_key,
        "secret_access_key_env": "BENCH_S3_SECRET",
    }
    pg: dict[str, tuple[int, Any]] = {}

    def start(name: str, redirect: bool, exe: str) -> None:
        cache = {"backend": "s3", "path": str(tmp / f"{name}-spool"), "s3": {**s3, "redirect": redirect}}
        port, _, proc = start_pullgate(
            procs, tmp, reg_port, name, exe, "sendfile", cache=cache, egress_allow=(f"127.0.0.1:{gw.port}",)
        )
        pg[name] = (port, proc)

    start("pullgate", False, args.pullgate)
    path = f"/v2/{PROXY_REPO}/blobs/{big}"
    auth = [f"Authorization: {BASIC}"]
    t0 = time.monotonic()
    _, got, code, _, _ = curl(f"http://127.0.0.1:{pg['pullgate'][0]}{path}", auth, args.pull_timeout)  # the fill
    if (code, got) != (200, size):
        raise BenchError(f"cold pull: HTTP {code}, {got} bytes")
    key = object_key("", big)
    deadline = time.monotonic() + 120
    while gw.signed("HEAD", f"/{bucket}/{key}")[0] != 200:  # published after the verified fill
        if time.monotonic() > deadline:
            raise BenchError("the object never appeared in the bucket")
        time.sleep(0.2)
    # Started once the object is in the bucket: they find it there (another replica's fill).
    start("pullgate_redirect", True, args.pullgate)
    if args.baseline:
        start("baseline", False, str(baseline_exe(tmp, args.baseline)))
    fill_s = time.monotonic() - t0
    client = S3Client(S3Endpoint(gw.url, REGION, bucket, gw.access_key, gw.secret_key), connector=lambda: None)  # type: ignore[arg-type,return-value]

    gw_pid = gw.proc.pid
    gw_host = f"127.0.0.1:{gw.port}"
    # (a fixed URL, or the origin a fresh presigned URL's path goes to; headers; follow)
    targets: dict[str, tuple[str, list[str], bool]] = {
        "direct_presigned": ("", [], False),
        "pullgate": (f"http://127.0.0.1:{pg['pullgate'][0]}{path}", auth, False),
        "pullgate_redirect": (f"http://127.0.0.1:{pg['pullgate_redirect'][0]}{path}", auth, True),
    }
    proxy_pid = {name: [proc.pid] for name, (_, proc) in pg.items()}
    # The reference proxies in front of versitygw: what one more hop costs on this machine.
    ng_port, ng_proc = start_nginx(procs, tmp, gw.port, host=gw_host, ready=("/", UNSIGNED))
    targets["nginx_in_front"] = (f"origin:http://127.0.0.1:{ng_port}", [], False)
    proxy_pid["nginx_in_front"] = [ng_proc.pid, *children(ng_proc.pid)]
    if os.access(HAPROXY, os.X_OK):
        ha_port, ha_proc = start_haproxy(procs, tmp, gw.port, gw_host)
        targets["haproxy_splice"] = (f"origin:http://127.0.0.1:{ha_port}", [], False)
        proxy_pid["haproxy_splice"] = [ha_proc.pid]
    else:
        print(f"({HAPROXY} not found: no HAProxy reference; apt-get install haproxy)", file=sys.stderr)
    if "baseline" in pg:
        targets["baseline"] = (f"http://127.0.0.1:{pg['baseline'][0]}{path}", auth, False)

    def url_of(name: str) -> str:
        url = targets[name][0]
        if url and not url.startswith("origin:"):
            return url
        fresh = client.presign_get(key, 60)  # a fresh URL for each pull
        return url.removeprefix("origin:") + "/" + fresh.split("/", 3)[3] if url else fresh

    speeds: dict[str, list[float]] = {k: [] for k in targets}
    proxy_cpu = dict.fromkeys(targets, 0.0)
    gw_cpu = dict.fromkeys(targets, 0.0)
    client_cpu = dict.fromkeys(targets, 0.0)
    for name, (_, headers, follow) in targets.items():  # warm-up: one pull each, unmeasured
        curl(url_of(name), headers, args.pull_timeout, follow)
    # The redirecting pullgate's own first pull was a miss (its index did not know the object);
    # hits are 307s once that fill's publish is done.
    deadline = time.monotonic() + 120
    while first_status(pg["pullgate_redirect"][0], path) != 307:
        if time.monotonic() > deadline:
            raise BenchError("the redirecting pullgate never answered 307")
        time.sleep(0.2)
    for i in range(args.repeat):
        for name in list(targets) if i % 2 == 0 else list(reversed(targets)):
            _, headers, follow = targets[name]
            url = url_of(name)
            pids = proxy_pid.get(name, [])
            profiled = args.profile and i == 0 and name == "pullgate"
            spy = spy_on(pids[0], args.profile / f"{name}.raw") if profiled else None
            p0, g0 = cpu_seconds(pids), cpu_seconds([gw_pid])
            mbs, got, code, hops, ccpu = curl(url, headers, args.pull_timeout, follow)
            if spy is not None:
                spy_stop(spy)
            proxy_cpu[name] += cpu_seconds(pids) - p0
            gw_cpu[name] += cpu_seconds([gw_pid]) - g0
            client_cpu[name] += ccpu
            if (code, got) != (200, size) or hops != (1 if follow else 0):
                raise BenchError(f"{name}: HTTP {code}, {got} bytes, {hops} redirects")
            speeds[name].append(mbs)
    # /proc counts CPU in 10 ms ticks: a 307 costs far less, so many of them, not followed.
    rport = pg["pullgate_redirect"][0]
    redirects_only(rport, path, 20)  # warm
    c0 = cpu_seconds(proxy_pid["pullgate_redirect"])
    secs = redirects_only(rport, path, args.redirects)
    per_redirect_ms = 1000 * (cpu_seconds(proxy_pid["pullgate_redirect"]) - c0) / args.redirects

    # Every measured pull of the streaming pullgates was a hit (their pull logs, once stopped).
    marks = {}
    for name in ("pullgate", "baseline"):
        if name in pg:
            procs.stop(pg[name][1])
            rows = cache_marks(tmp / f"{name}.db")
            marks[name] = {m: rows.count(m) for m in sorted(set(rows))}
            if len(rows) < args.repeat or set(rows[-args.repeat :]) != {"hit"}:
                raise BenchError(f"{name}: the measured pulls were not all hits ({marks[name]})")
    gib = args.repeat * size / GiB
    med = {k: round(statistics.median(v), 1) for k, v in speeds.items()}
    stream_ms_per_gib = 1000 * proxy_cpu["pullgate"] / gib
    redirect_ms_per_gib = per_redirect_ms * GiB / size  # one 307 per blob of this size
    return {
        "blob_bytes": size,
        "repeat": args.repeat,
        "fill_seconds": round(fill_s, 1),
        "mb_per_s": med,
        "mb_per_s_all": {k: [round(x, 1) for x in v] for k, v in speeds.items()},
        "ratio_pullgate_direct": round(med["pullgate"] / med["direct_presigned"], 3),
        "ratio_redirect_direct": round(med["pullgate_redirect"] / med["direct_presigned"], 3),
        "ratio_to_direct": {k: round(v / med["direct_presigned"], 3) for k, v in med.items()},
        "proxy_cpu_ms_per_gib": {
            **{k: round(1000 * v / gib, 1) for k, v in proxy_cpu.items() if k in proxy_pid},
            "pullgate": round(stream_ms_per_gib, 1),
            "pullgate_redirect_followed": round(1000 * proxy_cpu["pullgate_redirect"] / gib, 1),
            "pullgate_redirect_from_307s": round(redirect_ms_per_gib, 3),
        },
        "client_cpu_ms_per_gib": {k: round(1000 * v / gib, 1) for k, v in client_cpu.items()},
        "ratio_pullgate_best_reference": round(med["pullgate"] / max(med[k] for k in REFERENCES if k in med), 3),
        "redirect_cpu_ms_each": round(per_redirect_ms, 3),
        "redirects_per_s": round(args.redirects / secs, 1),
        "s3gw_cpu_ms_per_gib": {k: round(1000 * v / gib, 1) for k, v in gw_cpu.items()},
        "ratio_cpu_redirect_stream": round(redirect_ms_per_gib / stream_ms_per_gib, 5) if stream_ms_per_gib else None,
        "loadavg": round(os.getloadavg()[0], 2),
        "pull_log_cache_marks": marks,
        **(
            {
                "baseline": str(args.baseline),
                "ratio_baseline_direct": round(med["baseline"] / med["direct_presigned"], 3),
                "baseline_cpu_ms_per_gib": round(1000 * proxy_cpu["baseline"] / gib, 1),
            }
            if "baseline" in pg
            else {}
        ),
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"\nS3 cache hit of {r['blob_bytes'] // MiB} MiB (versitygw), median of {r['repeat']} (MB = 10^6 B)")
    print(f"(the fill: cold pull + upload + publish, {r['fill_seconds']} s)")
    print(f"{'path':<20}{'MB/s':>9}{'x direct':>9}{'proxy':>8}{'s3gw':>7}{'curl':>7}  (CPU ms/GiB)  runs")
    cpu = r["proxy_cpu_ms_per_gib"]
    for name, value in r["mb_per_s"].items():
        proxy = cpu.get(name if name != "pullgate_redirect" else "pullgate_redirect_followed", 0.0)
        print(
            f"{name:<20}{value:>9.1f}{r['ratio_to_direct'][name]:>9.3f}{proxy:>8.0f}"
            f"{r['s3gw_cpu_ms_per_gib'][name]:>7.0f}{r['client_cpu_ms_per_gib'][name]:>7.0f}"
            f"               {r['mb_per_s_all'][name]}"
        )
    print(f"pullgate/direct {r['ratio_pullgate_direct']} (target >= 0.8); redirect/direct {r['ratio_redirect_direct']}")
    refs = {k: v for k, v in r["ratio_to_direct"].items() if k in REFERENCES}
    if refs:
        best = max(refs, key=lambda k: refs[k])
        ratio = r["ratio_pullgate_best_reference"]
        print(f"best reference proxy: {best} {refs[best]} x direct; pullgate/{best} {ratio}")
    if "baseline" in r:
        print(
            f"baseline ({r['baseline']})/direct {r['ratio_baseline_direct']}, "
            f"its CPU {r['baseline_cpu_ms_per_gib']} ms/GiB"
        )
    cpu = r["proxy_cpu_ms_per_gib"]
    print(
        f"proxy CPU ms/GiB: streaming {cpu['pullgate']}; redirect {cpu['pullgate_redirect_from_307s']} "
        f"({r['redirect_cpu_ms_each']} ms per 307, {r['redirects_per_s']} 307/s on one connection; "
        f"over the followed pulls, 10 ms ticks: {cpu['pullgate_redirect_followed']}); "
        f"redirect/stream {r['ratio_cpu_redirect_stream']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blob-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--redirects", type=int, default=300, help="307s (not followed) timed for CPU per redirect")
    ap.add_argument("--baseline", type=Path, help="also measure this checkout's pullgate (e.g. /work/main)")
    ap.add_argument("--profile", type=Path, help="py-spy the first streamed hit; raw stacks written here")
    ap.add_argument("--pullgate", default=str(VENV_BIN / "pullgate"), help="executable")
    ap.add_argument("--pull-timeout", type=float, default=600, help="seconds per pull")
    ap.add_argument("--budget", type=int, default=1800, help="seconds for the whole run")
    args = ap.parse_args()
    if not 1 <= args.repeat <= 20 or not 1 <= args.redirects <= 5000:
        ap.error("--repeat 1..20, --redirects 1..5000")
    tools = {"docker-registry": REGISTRY, "curl": shutil.which("curl")}
    return bench_main(args, tools, "pullgate-s3-bench-", run, print_table)[0]


if __name__ == "__main__":
    sys.exit(main())
