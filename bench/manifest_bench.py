"""Manifest GET latency and requests/s: through pullgate vs direct from a token-auth registry.

Usage: .venv/bin/python bench/manifest_bench.py [--seconds 10] [--rounds 1] [--workers 1]
       [--baseline /work/main] [--profile DIR] [--no-access-log] [--cache] [--tag-ttl 3600]
See bench/README.md for what it prints.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support servers

from tests.support.images import Pusher, oci_image
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

WRK = "/usr/bin/wrk"
PY_SPY = Path(sys.executable).parent / "py-spy"
LICENSE = "bench-manifest-license-0123456789abcdef"
REPO, TAG = "vendor/app", "v1"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def wrk(url: str, token: str, connections: int, seconds: int) -> dict[str, Any]:
    """One bounded wrk run on loopback: requests/s, p50/p99 latency (ms), non-2xx count."""
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    argv += ["-H", f"Authorization: Bearer {token}", "-H", f"Accept: {ACCEPT}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": round(rps, 1),
        "p50_ms": pct.get("50"),
        "p99_ms": pct.get("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return round(float(m.group(1)) * scale, 3)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children that are alive (the workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    for p in [pid, *(int(k) for k in (kids.read_text().split() if kids.exists() else []))]:
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def get_json(url: str, auth: str) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": auth})  # noqa: S310 (loopback)
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
        return dict(json.load(resp))


def upstream_requests(reg: Registry) -> list[str]:
    """GETs and HEADs pullgate (User-Agent "pullgate") sent to the registry, per its access log."""
    return re.findall(r'"((?:GET|HEAD) /v2/[^"]*)" \d+ \d+ "[^"]*" "pullgate"', reg.log_text())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the serving process (collapsed stacks), while the load runs."""
    argv = [str(PY_SPY), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where the event loop's time goes, by what the profile named (inclusive shares).
GROUPS = {
    "jwt decode": ("jwt/",),
    "access log": ("AccessLogger.log", "logging/__init__.py"),
    "upstream request (aiohttp client)": ("ClientSession._request",),
    "upstream auth flow": ("UpstreamClient._drive",),
    "pull log": ("record_pull.<locals>", "PullLog.record"),
    "response write": ("StreamResponse.prepare", "write_eof"),
    "metrics": ("prometheus_client/",),
}


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """The main thread's samples: shares per group above, and the top self-time frames."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "proxy/__main__.py" not in stack:
            continue  # other threads (aiosqlite, the log writer): mostly waiting
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1].rsplit(":", 1)[0] + ")"] += n
        for group, needles in GROUPS.items():
            if any(needle in frame for frame in frames for needle in needles):
                inclusive[group] += n
    if not total:
        return {}
    return {
        "main_thread_samples": total,
        "groups_pct": {g: round(100 * inclusive[g] / total, 1) for g in GROUPS},
        "top_self_pct": [(name, round(100 * n / total, 1)) for name, n in leaves.most_common(top)],
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reg = Registry("token", name="bench-token", workdir=tmp / "registry")
    try:
        image = oci_image(Pusher.for_registry(reg), REPO, TAG)
        assert reg.token_server is not None
        teams = [
            {
                "name": "bench",
                "apps": [{"slug": "bench"}],
                "registries": [
                    {
                        "slug": "up",
                        "provider": "other",
                        "endpoint": "up.bench",
                        "url": reg.url,
                        "insecure": True,
                        "username": reg.username,
                        "password_env": "BENCH_UPSTREAM_PASSWORD",
                    }
                ],
                "customers": [{"name": "Bench", "app": "bench", "license_id_env": "BENCH_LICENSE_ID"}],
            }
        ]
        env = {"BENCH_LICENSE_ID": LICENSE, "BENCH_UPSTREAM_PASSWORD": reg.password or ""}
        # Level INFO (the default): the access line of every request is written, as in production.
        settings: dict[str, Any] = {"log": {"access_log": not args.no_access_log}}
        if args.cache:  # warm: a tag younger than cache.tag_ttl is answered without the upstream
            settings["cache"] = {"backend": "filesystem", "tag_ttl": args.tag_ttl}
        servers = {
            "pullgate": Pullgate(
                tmp / "pullgate",
                teams,
                env=env,
                settings=settings,
                args=["--workers", str(args.workers)] if args.workers > 1 else [],
            )
        }
        if args.baseline:  # another checkout's pullgate (one process), measured in the same run
            servers["baseline"] = Pullgate(tmp / "baseline", teams, env=env, settings=settings, name="baseline")
            servers["baseline"].root = args.baseline
        try:
            for server in servers.values():
                server.start()
            q = urllib.parse.urlencode({"service": reg.token_server.service, "scope": f"repository:{REPO}:pull"})
            direct_token = get_json(f"{reg.token_server.realm}?{q}", basic(reg.username or "", reg.password or ""))[
                "token"
            ]
            targets = {"direct": (f"{reg.url}/v2/{REPO}/manifests/{TAG}", direct_token)}
            for name, server in servers.items():
                scope = f"repository:proxy/bench/up/{REPO}:pull"
                q = urllib.parse.urlencode({"service": server.host, "scope": scope})
                token = get_json(f"{server.url}/v2/token?{q}", basic("LICENSE_ID", LICENSE))["token"]
                targets[name] = (f"{server.url}/v2/proxy/bench/up/{REPO}/manifests/{TAG}", token)
            for url, token in targets.values():  # warm: connections, upstream token, the cache
                # 16 connections: SO_REUSEPORT spreads them, so every worker (--workers N) has
                # learnt the tag (each worker's index is its own) before the measured runs.
                wrk(url, token, 16, 2)
            upstream_before = upstream_requests(reg)
            result: dict[str, Any] = {
                "seconds": args.seconds,
                "workers": args.workers,
                "access_log": not args.no_access_log,
                "cache": args.cache,
                "tag_ttl": args.tag_ttl if args.cache else None,
                "baseline": str(args.baseline) if args.baseline else None,
                "manifest_bytes": image.size,
                "loadavg_before": round(os.getloadavg()[0], 2),
            }
            for conns in (1, 16):
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
                for i in range(args.rounds):
                    # Alternate the order each round: load that drifts during the run hits all alike.
                    for name in list(targets) if i % 2 == 0 else list(reversed(targets)):
                        spy = None
                        if args.profile and name == "pullgate" and conns == 16 and i == 0:
                            args.profile.mkdir(parents=True, exist_ok=True)
                            spy = profile(servers[name].pid, args.seconds, args.profile / "pullgate-16.raw")
                        used = cpu_seconds(servers[name].pid) if name in servers else 0.0
                        run = wrk(*targets[name], conns, args.seconds)
                        if name in servers:
                            # CPU per request hardly moves with other load on the machine, unlike req/s.
                            used = cpu_seconds(servers[name].pid) - used
                            requests = run["rps"] * args.seconds
                            run["cpu_ms_per_request"] = round(1000 * used / requests, 3) if requests else None
                        runs[name].append(run)
                        if spy is not None:
                            spy.wait(60)
                for name, done in runs.items():
                    best = max(done, key=lambda r: r["rps"])
                    best["all_rps"] = [r["rps"] for r in done]
                    if name in servers:
                        best["cpu_ms_per_request"] = min(r["cpu_ms_per_request"] or 1e9 for r in done)
                    result[f"{name}_c{conns}"] = best
            for name in servers:
                d1, p1 = result["direct_c1"], result[f"{name}_c1"]
                d16, p16 = result["direct_c16"], result[f"{name}_c16"]
                suffix = "" if name == "pullgate" else f"_{name}"
                result[f"added_p50_ms_c1{suffix}"] = round(p1["p50_ms"] - d1["p50_ms"], 3)
                result[f"ratio_rps_c16{suffix}"] = round(p16["rps"] / d16["rps"], 3)
                result[f"ratio_rps_c1{suffix}"] = round(p1["rps"] / d1["rps"], 3)
                # Medians too: the best of each can come from different moments of a noisy machine.
                med = statistics.median
                result[f"ratio_rps_c16_median{suffix}"] = round(med(p16["all_rps"]) / med(d16["all_rps"]), 3)
            result["loadavg_after"] = round(os.getloadavg()[0], 2)
            # The proxy's requests to the registry during the measured runs (its User-Agent).
            during = upstream_requests(reg)[len(upstream_before) :]
            result["upstream_requests_measured"] = len(during)
            if args.cache and during:
                raise RuntimeError(f"warm cache, yet {len(during)} upstream requests: {during[:5]}")
            if args.profile:
                raw = args.profile / "pullgate-16.raw"
                if raw.exists():
                    result["profile"] = summarize(raw)
        finally:
            for server in servers.values():
                if server.proc is not None:
                    server.stop()
    finally:
        reg.stop()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10, help="length of each wrk run (bounded: at most 120)")
    p.add_argument("--rounds", "--repeat", type=int, default=1, help="wrk runs per figure (the best is kept)")
    p.add_argument("--workers", type=int, default=1, help="pullgate serve --workers N")
    p.add_argument("--no-access-log", action="store_true", help="log.access_log: false")
    p.add_argument("--cache", action="store_true", help="filesystem cache on: warm manifest hits")
    p.add_argument("--tag-ttl", type=float, default=3600, help="cache.tag_ttl with --cache (longer than the run)")
    p.add_argument("--profile", type=Path, help="py-spy the 16-connection run; raw stacks written here")
    p.add_argument("--baseline", type=Path, help="also measure the pullgate of this checkout (e.g. /work/main)")
    args = p.parse_args()
    if not 1 <= args.seconds <= 120 or not 1 <= args.rounds <= 5:
        p.error("--seconds 1..120, --rounds 1..5")
    for exe in (WRK, "/usr/bin/docker-registry"):
        if not Path(exe).exists():
            print(f"{exe} is missing (Debian: wrk docker-registry)", file=sys.stderr)
            return 2
    if args.profile and not PY_SPY.exists():
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pullgate-manifest-bench-") as d:
        t0 = time.monotonic()
        result = run(args, Path(d))
        result["wall_seconds"] = round(time.monotonic() - t0, 1)
    names = ["direct", "pullgate"] + (["baseline"] if args.baseline else [])
    for conns in (1, 16):
        for name in names:
            r = result[f"{name}_c{conns}"]
            cpu = f"  CPU {r['cpu_ms_per_request']:.3f} ms/request" if "cpu_ms_per_request" in r else ""
            lat = f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms"
            print(f"{name:9} c={conns:<3} {r['rps']:9.1f} req/s  {lat}{cpu}")
    print(
        f"added p50 at 1 connection: {result['added_p50_ms_c1']} ms; req/s ratio at 16: {result['ratio_rps_c16']} "
        f"(best of each), {result['ratio_rps_c16_median']} (medians)"
    )
    cache = f"cache on, tag_ttl {result['tag_ttl']} s" if result["cache"] else "cache off"
    print(
        f"{cache}; workers {result['workers']}; "
        f"upstream requests while measuring: {result['upstream_requests_measured']}"
    )
    if args.baseline:
        added, ratio = result["added_p50_ms_c1_baseline"], result["ratio_rps_c16_baseline"]
        print(f"baseline: added p50 at 1 connection: {added} ms; req/s ratio at 16: {ratio}")
    prof = result.get("profile", {})
    for name, share in prof.get("groups_pct", {}).items():
        print(f"  {share:5.1f}%  {name} (inclusive)")
    for name, share in prof.get("top_self_pct", []):
        print(f"  {share:5.1f}%  {name} (self)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
