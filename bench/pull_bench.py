"""Blob pull throughput and memory: docker-registry directly, through nginx, through pullgate.

Usage: .venv/bin/python bench/pull_bench.py [--blob-mib 1024] [--repeat 3] [--skip-proxy]
See bench/README.md for what it prints.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REGISTRY = "/usr/bin/docker-registry"
NGINX = "/usr/sbin/nginx"
VENV_BIN = Path(sys.executable).parent
REPO, TAG = "vendor/big", "v1"
PROXY_REPO = f"proxy/bench/up/{REPO}"
LICENSE = "bench-license-" + hashlib.sha256(b"pullgate-bench").hexdigest()[:24]
MiB = 1 << 20
CHUNK = 4 * MiB


class BenchError(RuntimeError):
    pass


def _die_with_parent() -> None:
    # Children get SIGTERM if the bench dies, so nothing outlives it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Every process the bench starts, stopped in reverse order."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, preexec_fn=_die_with_parent)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_status(url: str, want: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback)
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, ConnectionError):
            status = 0
        if status == want:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BenchError(f"{url} never answered {want} (last {status}):\n{tail}")
        time.sleep(0.1)


def random_chunks(size: int, seed: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, generated chunk by chunk (never all in memory)."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def push_blob(port: int, chunks: Iterator[bytes]) -> tuple[str, int]:
    """Stream a blob with one chunked PATCH, hashing on the way; then PUT ?digest=."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", f"/v2/{REPO}/blobs/uploads/")
    resp = conn.getresponse()
    resp.read()
    if resp.status != 202:
        raise BenchError(f"upload start: {resp.status}")
    location = urllib.parse.urlsplit(resp.headers["Location"])
    sha, size = hashlib.sha256(), 0

    def body() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            sha.update(chunk)
            size += len(chunk)
            yield chunk

    path = f"{location.path}?{location.query}"
    conn.request("PATCH", path, body=body(), encode_chunked=True, headers={"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 202:
        raise BenchError(f"upload patch: {resp.status}")
    digest = "sha256:" + sha.hexdigest()
    location = urllib.parse.urlsplit(resp.headers["Location"])
    sep = "&" if location.query else ""
    conn.request("PUT", f"{location.path}?{location.query}{sep}digest={digest}", body=b"")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 201:
        raise BenchError(f"upload put: {resp.status}")
    return digest, size


def push_image(port: int, big_size: int) -> dict[str, Any]:
    big = push_blob(port, random_chunks(big_size, 1))
    small = push_blob(port, random_chunks(MiB, 2))
    config = push_blob(port, iter([b'{"architecture":"amd64","os":"linux"}']))
    layer = "application/vnd.oci.image.layer.v1.tar"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": layer, "digest": d, "size": s} for d, s in (big, small)],
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{REPO}/manifests/{TAG}",
        manifest,
        method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    urllib.request.urlopen(req, timeout=30).close()  # noqa: S310
    return {"big": big, "small": small}


def start_registry(procs: Procs, tmp: Path) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    cfg = tmp / "registry.yml"
    cfg.write_text(
        json.dumps(
            {  # JSON is YAML
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(tmp / "registry")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    log = tmp / "registry.log"
    proc = procs.start([REGISTRY, "serve", str(cfg)], log)
    wait_status(f"http://127.0.0.1:{port}/v2/", 200, proc, log)
    return port, proc


def start_nginx(
    procs: Procs, tmp: Path, upstream: int, host: str = "$http_host", ready: tuple[str, int] = ("/v2/", 200)
) -> tuple[int, subprocess.Popen[bytes]]:
    """nginx (one worker, 256 KiB buffers, keep-alive upstream) in front of `upstream`; `host`
    the Host it sends (a presigned S3 URL signs the endpoint's own), `ready` a path and the
    status the upstream answers it with once up."""
    port, root = free_port(), tmp / "nginx"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    temp_paths = "\n".join(f"  {s}_temp_path {root / s};" for s in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = f"user {os.getenv('USER', 'root')};" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp_paths}
  upstream registry {{ server 127.0.0.1:{upstream}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host {host};
      proxy_buffering off;
      proxy_buffer_size 256k;
      proxy_buffers 4 256k;  # nginx insists busy buffers < all buffers - one
      proxy_busy_buffers_size 256k;
      proxy_read_timeout 600s;
    }}
  }}
}}
""")
    log = root / "stderr.log"
    proc = procs.start([NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")], log)
    wait_status(f"http://127.0.0.1:{port}{ready[0]}", ready[1], proc, root / "error.log")
    return port, proc


def start_pullgate(
    procs: Procs,
    tmp: Path,
    upstream: int,
    name: str,
    exe_path: str,
) -> tuple[int, subprocess.Popen[bytes]]:
    port, admin = free_port(), free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "proxy": {"listen": f"127.0.0.1:{port}", "hosts": [f"127.0.0.1:{port}"]},
                "admin": {"listen": f"127.0.0.1:{admin}"},
                "store": f"sqlite:///{tmp / 'pullgate.db'}",  # absolute path: four slashes
                "keys": {"file": str(tmp / "keys.yaml")},
                # The loopback registry is an exception to the egress policy, as an on-premises one would be.
                "upstream": {"egress_allow": [f"127.0.0.1:{upstream}"]},
                # The relay is measured here; the cache has bench/cache_bench.py.
                "cache": {"backend": "none"},
                "bootstrap": {
                    "teams": [
                        {
                            "name": "bench",
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
            },
            indent=1,
        )
    )
    exe = Path(exe_path)
    if not exe.exists():
        raise BenchError(f"{exe} not found (give --pullgate, or run the venv's python)")
    log = tmp / f"{name}.log"
    env = {**os.environ, "BENCH_LICENSE_ID": LICENSE}
    proc = procs.start([str(exe), "serve", "--config", str(cfg)], log, env)
    wait_status(f"http://127.0.0.1:{port}/v2/", 401, proc, log, timeout=60)
    return port, proc


def curl(url: str, headers: list[str], timeout: float) -> tuple[float, int, int]:
    argv = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        str(int(timeout)),
        "-w",
        "%{speed_download} %{size_download} %{http_code}",
    ]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=timeout + 10)
    speed, size, code = out.stdout.split()
    return float(speed), int(size), int(code)


def proxy_auth(port: int, blob: str) -> list[str]:
    """Basic with the license if the proxy takes it on blob routes, else a pull token."""
    basic = "Basic " + base64.b64encode(f"LICENSE_ID:{LICENSE}".encode()).decode()
    _, _, code = curl(f"http://127.0.0.1:{port}/v2/{PROXY_REPO}/blobs/{blob}", [f"Authorization: {basic}"], 60)
    if code == 200:
        return [f"Authorization: {basic}"]
    query = urllib.parse.urlencode({"service": f"127.0.0.1:{port}", "scope": f"repository:{PROXY_REPO}:pull"})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/token?{query}", headers={"Authorization": basic})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        token = json.load(resp)
    return [f"Authorization: Bearer {token.get('token') or token['access_token']}"]


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for {pid}")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def pull_n(url: str, headers: list[str], size: int, n: int, timeout: float) -> list[float]:
    speeds = []
    for _ in range(n):
        speed, got, code = curl(url, headers, timeout)
        if code != 200 or got != size:
            raise BenchError(f"{url}: HTTP {code}, {got} bytes, expected {size}")
        speeds.append(speed / 1e6)
    return speeds


def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    size = args.blob_mib * MiB
    reg_port, reg_proc = start_registry(procs, tmp)
    t0 = time.monotonic()
    blobs = push_image(reg_port, size)
    big, small = blobs["big"][0], blobs["small"][0]
    print(f"pushed {args.blob_mib} MiB blob {big[:19]}… in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    ng_port, ng_proc = start_nginx(procs, tmp, reg_port)

    targets: dict[str, tuple[str, list[str]]] = {
        "direct": (f"http://127.0.0.1:{reg_port}/v2/{REPO}/blobs/{big}", []),
        "nginx": (f"http://127.0.0.1:{ng_port}/v2/{REPO}/blobs/{big}", []),
    }
    result: dict[str, Any] = {"blob_bytes": size, "repeat": args.repeat}
    if not args.skip_proxy:
        try:
            pg_port, pg_proc = start_pullgate(procs, tmp, reg_port, "pullgate-throughput", args.pullgate)
            headers = proxy_auth(pg_port, small)
            targets["pullgate"] = (f"http://127.0.0.1:{pg_port}/v2/{PROXY_REPO}/blobs/{big}", headers)
            result["pullgate_auth"] = headers[0].split()[1].lower()  # basic or bearer
        except (BenchError, OSError) as exc:  # still measure direct and nginx
            result["proxy_error"] = str(exc)[-1500:]
            args.skip_proxy = True

    # CPU time the serving process spends per MB: unlike MB/s, hardly moved by other load.
    servers = {"direct": [reg_proc.pid], "nginx": children(ng_proc.pid)}
    if "pullgate" in targets:
        servers["pullgate"] = [pg_proc.pid]
    speeds: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, float] = {name: 0.0 for name in targets}
    for i in range(args.repeat):
        order = list(targets) if i % 2 == 0 else list(reversed(targets))  # alternate: no warm bias
        for name in order:
            url, headers = targets[name]
            before = cpu_seconds(servers[name])
            speeds[name] += pull_n(url, headers, size, 1, args.pull_timeout)
            cpu[name] += cpu_seconds(servers[name]) - before
    result["mb_per_s"] = {name: round(statistics.median(v), 1) for name, v in speeds.items()}
    result["server_cpu_ms_per_mb"] = {
        name: round(1000 * used / (args.repeat * size / 1e6), 3) for name, used in cpu.items()
    }
    result["mb_per_s_all"] = {name: [round(x, 1) for x in v] for name, v in speeds.items()}
    workers = children(ng_proc.pid)
    nginx_kib = max(map(hwm_kib, workers), default=0)
    result["nginx_worker_hwm_mib"] = round(nginx_kib / 1024, 1) if workers else None
    result["registry_hwm_mib"] = round(hwm_kib(reg_proc.pid) / 1024, 1)

    if not args.skip_proxy:
        med = result["mb_per_s"]
        result["ratio_pullgate_direct"] = round(med["pullgate"] / med["direct"], 3)
        result["ratio_pullgate_nginx"] = round(med["pullgate"] / med["nginx"], 3)
        result["pullgate_throughput_proc_hwm_mib"] = round(hwm_kib(pg_proc.pid) / 1024, 1)
        procs.stop(pg_proc)
        # Fresh processes, same warm-up, so the only difference is the big transfer.
        hwm = {}
        for label, big_pulls in (("small", 0), ("big", 1)):
            port, proc = start_pullgate(procs, tmp, reg_port, f"pullgate-rss-{label}", args.pullgate)
            headers = proxy_auth(port, small)
            base = f"http://127.0.0.1:{port}/v2/{PROXY_REPO}/blobs/"
            pull_n(base + small, headers, MiB, 3, 60)
            pull_n(base + big, headers, size, big_pulls, args.pull_timeout)
            hwm[label] = hwm_kib(proc.pid) / 1024
            procs.stop(proc)
        result["pullgate_hwm_small_mib"] = round(hwm["small"], 1)
        result["pullgate_hwm_big_mib"] = round(hwm["big"], 1)
        result["pullgate_hwm_delta_mib"] = round(hwm["big"] - hwm["small"], 1)
    return result


def print_table(r: dict[str, Any]) -> None:
    med = r["mb_per_s"]
    print(f"\nblob {r['blob_bytes'] // MiB} MiB, median of {r['repeat']} (MB/s = 10^6 B/s)")
    print(f"{'path':<10}{'MB/s':>10}{'server CPU ms/MB':>18}  runs")
    for name, value in med.items():
        cpu = r["server_cpu_ms_per_mb"][name]
        print(f"{name:<10}{value:>10.1f}{cpu:>18.3f}  {r['mb_per_s_all'][name]}")
    if "ratio_pullgate_direct" in r:
        print(f"pullgate/direct {r['ratio_pullgate_direct']:.3f}   pullgate/nginx {r['ratio_pullgate_nginx']:.3f}")
        print(
            f"pullgate peak RSS (VmHWM, MiB): 1 MiB pulls {r['pullgate_hwm_small_mib']}, "
            f"+ {r['blob_bytes'] // MiB} MiB pull {r['pullgate_hwm_big_mib']}, "
            f"delta {r['pullgate_hwm_delta_mib']} (target < 10)"
        )
    print(f"nginx worker VmHWM {r['nginx_worker_hwm_mib']} MiB, registry VmHWM {r['registry_hwm_mib']} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blob-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-proxy", action="store_true", help="only direct and nginx")
    ap.add_argument("--pullgate", default=str(VENV_BIN / "pullgate"), help="executable")
    ap.add_argument("--pull-timeout", type=float, default=600, help="seconds per pull")
    ap.add_argument("--budget", type=int, default=3600, help="seconds for the whole run")
    args = ap.parse_args()
    tools = {"docker-registry": REGISTRY, "nginx": NGINX, "curl": shutil.which("curl")}
    code, result = bench_main(args, tools, "pullgate-bench-", run, print_table)
    if result is None:
        return code
    if "proxy_error" in result:
        print(f"pullgate part failed: {result['proxy_error']}", file=sys.stderr)
        return 1
    return 0


def bench_main(
    args: argparse.Namespace,
    tools: Mapping[str, str | None],
    prefix: str,
    run: Callable[[argparse.Namespace, Procs, Path], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
) -> tuple[int, dict[str, Any] | None]:
    """A bench's main after its arguments: the tools it needs checked (name: path, None when
    not found), `run` bounded, its table and one JSON line printed. (exit code, the result)."""
    for name, path in tools.items():
        if not path or not os.access(path, os.X_OK):
            print(f"missing tool: {path or name}", file=sys.stderr)
            return 2, None
    result = bounded_run(args, prefix, run)
    if result is None:
        return 1, None
    print_table(result)
    print(json.dumps(result, sort_keys=True))
    return 0, result


def bounded_run(
    args: argparse.Namespace, prefix: str, run: Callable[[argparse.Namespace, Procs, Path], dict[str, Any]]
) -> dict[str, Any] | None:
    """`run` within `args.budget` seconds, in a temporary directory, every process it started
    stopped and the directory removed whatever happens; None (reported) when it failed."""

    def over_budget(*_: object) -> None:
        raise TimeoutError(f"bench exceeded --budget {args.budget}s")

    signal.signal(signal.SIGALRM, over_budget)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    signal.alarm(args.budget)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return run(args, procs, tmp)
    except (BenchError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return None
    finally:
        signal.alarm(0)
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
