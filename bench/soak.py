"""Soak: many concurrent clients, two teams, twenty licenses, for a while.

Usage: .venv/bin/python bench/soak.py [--seconds 60] [--clients 200] [--out soak.json]
See bench/README.md for what it does and prints. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.images import MiB, PushedImage, Pusher, oci_image
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

KINDS = ("token", "manifest", "blob")
LICENSES_PER_TEAM = 10
IMAGES_PER_TEAM = 2


@dataclass
class Team:
    name: str
    registry: Registry
    images: list[PushedImage]
    licenses: list[str]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: Counter[str] = field(default_factory=Counter)  # "kind status" not what the license deserved
    wrong_bytes: int = 0
    verified_bytes: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # connection-level errors by type


def _basic(license_id: str) -> str:
    return "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def setup(workdir: Path, blob_mib: int) -> tuple[list[Team], Pullgate]:
    teams: list[Team] = []
    for name, auth in (("acme", "htpasswd"), ("globex", "token")):
        reg = Registry(auth, name=f"soak-{name}")  # type: ignore[arg-type]
        pusher = Pusher.for_registry(reg)
        images = [
            oci_image(pusher, f"vendor/app{i}", "v1", [(4096, f"{name}-{i}-s"), (blob_mib * MiB, f"{name}-{i}")])
            for i in range(IMAGES_PER_TEAM)
        ]
        licenses = [f"soak-{name}-{i:02d}-{secrets.token_hex(12)}" for i in range(LICENSES_PER_TEAM)]
        teams.append(Team(name, reg, images, licenses))
    env: dict[str, str] = {}
    spec = []
    for t in teams:
        registry: dict[str, Any] = {
            "slug": f"{t.name}-reg",
            "provider": "other",
            "endpoint": f"{t.name}.soak.test",
            "url": t.registry.url,
            "insecure": True,
        }
        if t.registry.password:
            env[f"SOAK_{t.name.upper()}_PW"] = t.registry.password
            registry |= {"username": t.registry.username, "password_env": f"SOAK_{t.name.upper()}_PW"}
        customers = []
        for i, lic in enumerate(t.licenses):
            env[f"SOAK_{t.name.upper()}_LIC_{i}"] = lic
            customers.append(
                {"name": f"{t.name} customer {i}", "app": t.name, "license_id_env": f"SOAK_{t.name.upper()}_LIC_{i}"}
            )
        spec.append({"name": t.name, "apps": [{"slug": t.name}], "registries": [registry], "customers": customers})
    settings = {
        # Each client claims its own address through X-Forwarded-For (as clients behind a load
        # balancer would), so per-address limits and failed-auth throttling apply per client.
        "proxy": {"trusted_proxies": ["127.0.0.1/32"]},
        "log": {"access_log": False},
    }
    server = Pullgate(workdir / "pullgate", spec, env=env, settings=settings).start()
    return teams, server


async def client(
    n: int,
    session: aiohttp.ClientSession,
    server: Pullgate,
    teams: list[Team],
    deadline: float,
    tally: Tally,
    rng: random.Random,
    bad_ratio: float,
    weights: list[float],
) -> None:
    forwarded = f"10.{n // 250}.{n % 250}.{rng.randrange(1, 250)}"
    while time.monotonic() < deadline:
        team = rng.choice(teams)
        bad = rng.random() < bad_ratio
        license_id = f"soak-bad-{secrets.token_hex(12)}" if bad else rng.choice(team.licenses)
        img = rng.choice(team.images)
        name = f"proxy/{team.name}/{team.name}-reg/{img.repo}"
        kind = rng.choices(KINDS, weights)[0]
        headers = {"Authorization": _basic(license_id), "X-Forwarded-For": forwarded}
        if kind == "token":
            url = f"{server.url}/v2/token?service={server.host}&scope=repository:{name}:pull"
            want_digest = None
        elif kind == "manifest":
            url = f"{server.url}/v2/{name}/manifests/v1"
            headers["Accept"] = img.media_type
            want_digest = img.digest
        else:
            want_digest = img.blobs[-1][0]
            url = f"{server.url}/v2/{name}/blobs/{want_digest}"
        started = time.monotonic()
        try:
            async with session.get(url, headers=headers) as r:
                h = hashlib.sha256()
                size = 0
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            tally.failures[type(exc).__name__] += 1
            continue
        tally.latencies[kind].append(time.monotonic() - started)
        tally.statuses[kind][str(status)] += 1
        expected = 401 if bad else 200
        if status != expected:
            tally.unexpected[f"{kind} {status}"] += 1
        elif status == 200 and want_digest is not None:
            if "sha256:" + h.hexdigest() != want_digest:
                tally.wrong_bytes += 1
            else:
                tally.verified_bytes += size


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pullgate-soak-"))
    teams: list[Team] = []
    server: Pullgate | None = None
    try:
        print(f"seeding 2 registries ({IMAGES_PER_TEAM} images each, {args.blob_mib} MiB layers) ...", flush=True)
        teams, server = await asyncio.to_thread(setup, workdir, args.blob_mib)
        fds_before = server.open_fds()
        tally = Tally()
        rng = random.Random(args.seed)
        weights = [args.token_weight, args.manifest_weight, args.blob_weight]
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=args.request_timeout)
        print(f"{args.clients} clients for {args.seconds:.0f} s ...", flush=True)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = started + args.seconds
            await asyncio.gather(
                *(
                    client(
                        n, session, server, teams, deadline, tally, random.Random(rng.random()), args.bad_ratio, weights
                    )
                    for n in range(args.clients)
                )
            )
        elapsed = time.monotonic() - started
        hwm_mib = _hwm_kib(server.pid) / 1024
        fds_end = server.open_fds()
        print(f"settling {args.settle:.0f} s (upstream keep-alive) ...", flush=True)
        await asyncio.sleep(args.settle)
        fds_after = server.open_fds()
        total = sum(len(v) for v in tally.latencies.values())
        statuses = {k: dict(v) for k, v in tally.statuses.items()}
        fivexx = sum(c for v in tally.statuses.values() for s, c in v.items() if s.startswith("5"))
        return {
            "seconds": round(elapsed, 1),
            "clients": args.clients,
            "licenses": sum(len(t.licenses) for t in teams),
            "teams": len(teams),
            "blob_mib": args.blob_mib,
            "bad_license_ratio": args.bad_ratio,
            "requests": total,
            "requests_per_s": round(total / elapsed, 1),
            "latency_ms": {
                k: {
                    "count": len(v),
                    "p50": round(_pct(v, 0.5) * 1000, 1),
                    "p99": round(_pct(v, 0.99) * 1000, 1),
                    "mean": round(statistics.fmean(v) * 1000, 1) if v else 0.0,
                }
                for k, v in tally.latencies.items()
            },
            "statuses": statuses,
            "unexpected": dict(tally.unexpected),
            "connection_failures": dict(tally.failures),
            "5xx": fivexx,
            "wrong_bytes": tally.wrong_bytes,
            "verified_mib": round(tally.verified_bytes / MiB, 1),
            "mib_per_s": round(tally.verified_bytes / MiB / elapsed, 1),
            "proxy_peak_rss_mib": round(hwm_mib, 1),
            "fds_before": fds_before,
            "fds_at_end": fds_end,
            "fds_after_settle": fds_after,
        }
    finally:
        if server is not None:
            server.stop()
        for t in teams:
            t.registry.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def print_table(r: dict[str, Any]) -> None:
    print()
    print(
        f"{r['clients']} clients, {r['teams']} teams, {r['licenses']} licenses, {r['blob_mib']} MiB blobs, "
        f"{r['bad_license_ratio']:.0%} bad licenses, {r['seconds']} s"
    )
    print(f"{'kind':<10}{'count':>9}{'p50 ms':>10}{'p99 ms':>10}  statuses")
    for kind in KINDS:
        lat = r["latency_ms"].get(kind, {"count": 0, "p50": 0, "p99": 0})
        st = " ".join(f"{s}:{c}" for s, c in sorted(r["statuses"].get(kind, {}).items()))
        print(f"{kind:<10}{lat['count']:>9}{lat['p50']:>10}{lat['p99']:>10}  {st}")
    print(f"requests/s {r['requests_per_s']}   verified {r['verified_mib']} MiB ({r['mib_per_s']} MiB/s)")
    print(
        f"5xx {r['5xx']}   unexpected {r['unexpected'] or 0}   connection failures {r['connection_failures'] or 0}"
        f"   wrong bytes {r['wrong_bytes']}"
    )
    print(
        f"proxy peak RSS {r['proxy_peak_rss_mib']} MiB   fds before {r['fds_before']}, at end {r['fds_at_end']}, "
        f"after settle {r['fds_after_settle']}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--blob-mib", type=int, default=10)
    p.add_argument("--bad-ratio", type=float, default=0.05, help="share of requests with a license that does not exist")
    p.add_argument("--token-weight", type=float, default=0.3)
    p.add_argument("--manifest-weight", type=float, default=0.5)
    p.add_argument("--blob-weight", type=float, default=0.2)
    p.add_argument("--request-timeout", type=float, default=120, help="bound on one request, body included")
    p.add_argument("--settle", type=float, default=35, help="seconds to wait before counting fds after the run")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--out", default="soak.json", help="where the JSON goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args()
    result = asyncio.run(run(args))
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {args.out}")
    return 0 if result["5xx"] == 0 and result["wrong_bytes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
