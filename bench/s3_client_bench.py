"""S3 client libraries for the cache, measured against a real S3 server (versitygw) on loopback.

Usage: .venv/bin/python bench/s3_client_bench.py [--mib 1024] [--clients aiobotocore,obstore,pullgate]

Each client runs in a child process of its own (so its RSS is its own), through the same
operations the S3 cache needs:

- upload: a streamed multipart upload of --mib MiB from an async source of 256 KiB chunks
  (new bytes each, as an upstream response gives them), 8 MiB parts, 2 parts in flight;
- get: the whole object streamed back, 1 MiB reads; range: a quarter of it from a tenth in;
- head / delete: 200 sequential requests each (ms per request);
- list: 500 small objects under a prefix, listed back (ms per listing);
- presign: 1000 presigned GETs (µs each), and one fetched with urllib.

Figures: MiB/s for upload/get/range, and RSS: the child's RSS before the phase and its peak
during it (VmHWM, reset before each phase through /proc/self/clear_refs). "pullgate" is
proxy/cache/s3client.py. aiobotocore and obstore are not pullgate dependencies: install them
in a scratch venv (`python3 -m venv /tmp/s3b && /tmp/s3b/bin/pip install -e . aiobotocore
obstore`; aiobotocore pins botocore below pullgate's floor, so not in the project's venv).
The run is bounded by --budget seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
PART = 8 * MiB
SOURCE_CHUNK = 256 * 1024
INFLIGHT = 2


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


async def source(total: int) -> AsyncIterator[bytes]:
    """Pseudo-random bytes in 256 KiB chunks, a fresh bytes object each (as a socket gives)."""
    block = hashlib.shake_256(b"pullgate-s3-bench").digest(4 * MiB)
    sent = 0
    while sent < total:
        n = min(SOURCE_CHUNK, total - sent)
        off = sent % (len(block) - SOURCE_CHUNK)
        yield block[off : off + n]
        sent += n
        await asyncio.sleep(0)


def expected_digest(total: int) -> str:
    async def run() -> str:
        h = hashlib.sha256()
        async for c in source(total):
            h.update(c)
        return h.hexdigest()

    return asyncio.run(run())


async def parts(total: int) -> AsyncIterator[bytes]:
    buf = bytearray()
    async for chunk in source(total):
        buf += chunk
        if len(buf) >= PART:
            yield bytes(buf[:PART])
            del buf[:PART]
    if buf:
        yield bytes(buf)


async def pipelined(total: int, put_part: Callable[[int, bytes], Awaitable[Any]]) -> list[Any]:
    """Upload parts with at most INFLIGHT in flight; memory ~ (INFLIGHT + 1) parts."""
    sem = asyncio.Semaphore(INFLIGHT)
    tasks: list[asyncio.Task[Any]] = []

    async def one(n: int, body: bytes) -> Any:
        try:
            return await put_part(n, body)
        finally:
            sem.release()

    n = 0
    async for body in parts(total):
        await sem.acquire()
        n += 1
        tasks.append(asyncio.create_task(one(n, body)))
    return await asyncio.gather(*tasks)


# --- candidates: each returns an object with the same async methods -------------------------


class Aiobotocore:
    def __init__(self, cfg: dict[str, str]) -> None:
        self.cfg = cfg

    async def __aenter__(self) -> Aiobotocore:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        self._cm = get_session().create_client(
            "s3",
            endpoint_url=self.cfg["endpoint"],
            region_name=self.cfg["region"],
            aws_access_key_id=self.cfg["key"],
            aws_secret_access_key=self.cfg["secret"],
            config=AioConfig(s3={"addressing_style": "path"}, signature_version="s3v4", max_pool_connections=16),
        )
        self.c = await self._cm.__aenter__()
        self.b = self.cfg["bucket"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def upload(self, key: str, total: int) -> None:
        up = await self.c.create_multipart_upload(Bucket=self.b, Key=key)
        uid = up["UploadId"]

        async def put(n: int, body: bytes) -> dict[str, Any]:
            r = await self.c.upload_part(Bucket=self.b, Key=key, UploadId=uid, PartNumber=n, Body=body)
            return {"PartNumber": n, "ETag": r["ETag"]}

        done = await pipelined(total, put)
        await self.c.complete_multipart_upload(Bucket=self.b, Key=key, UploadId=uid, MultipartUpload={"Parts": done})

    async def get(self, key: str, rng: tuple[int, int] | None = None) -> int:
        kw = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}
        r = await self.c.get_object(Bucket=self.b, Key=key, **kw)
        n = 0
        async with r["Body"] as body:
            async for chunk in body.iter_chunks(MiB):
                n += len(chunk)
        return n

    async def put_small(self, key: str, data: bytes) -> None:
        await self.c.put_object(Bucket=self.b, Key=key, Body=data)

    async def head(self, key: str) -> int:
        return int((await self.c.head_object(Bucket=self.b, Key=key))["ContentLength"])

    async def delete(self, key: str) -> None:
        await self.c.delete_object(Bucket=self.b, Key=key)

    async def list(self, prefix: str) -> int:
        n = 0
        async for page in self.c.get_paginator("list_objects_v2").paginate(Bucket=self.b, Prefix=prefix):
            n += len(page.get("Contents", []))
        return n

    async def presign(self, key: str) -> str:
        return str(
            await self.c.generate_presigned_url("get_object", Params={"Bucket": self.b, "Key": key}, ExpiresIn=60)
        )


class Obstore:
    def __init__(self, cfg: dict[str, str]) -> None:
        import obstore
        from obstore.store import S3Store

        self.obs = obstore
        self.s = S3Store(
            cfg["bucket"],
            endpoint=cfg["endpoint"],
            region=cfg["region"],
            access_key_id=cfg["key"],
            secret_access_key=cfg["secret"],
            client_options={"allow_http": True},
        )

    async def __aenter__(self) -> Obstore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def upload(self, key: str, total: int) -> None:
        await self.obs.put_async(self.s, key, source(total), chunk_size=PART, max_concurrency=INFLIGHT)

    async def get(self, key: str, rng: tuple[int, int] | None = None) -> int:
        opts: dict[str, Any] = {"range": rng} if rng else {}
        r = await self.obs.get_async(self.s, key, options=opts)  # type: ignore[arg-type]
        n = 0
        async for chunk in r.stream(min_chunk_size=MiB):
            n += len(chunk)
        return n

    async def put_small(self, key: str, data: bytes) -> None:
        await self.obs.put_async(self.s, key, data)

    async def head(self, key: str) -> int:
        return int((await self.obs.head_async(self.s, key))["size"])

    async def delete(self, key: str) -> None:
        await self.obs.delete_async(self.s, key)

    async def list(self, prefix: str) -> int:
        n = 0
        async for batch in self.obs.list(self.s, prefix):
            n += len(batch)
        return n

    async def presign(self, key: str) -> str:
        from datetime import timedelta

        return str(await self.obs.sign_async(self.s, "GET", key, timedelta(seconds=60)))


class Pullgate:
    """proxy/cache/s3client.py: aiohttp (with the egress-guarded connector) + botocore's signer."""

    def __init__(self, cfg: dict[str, str]) -> None:
        self.cfg = cfg

    async def __aenter__(self) -> Pullgate:
        from proxy.cache.s3client import S3Client, S3Endpoint
        from proxy.egress import EgressPolicy, parse_allow
        from proxy.upstream.connector import GuardedConnector

        policy = EgressPolicy(parse_allow(["127.0.0.0/8"]))
        ep = S3Endpoint(
            self.cfg["endpoint"], self.cfg["region"], self.cfg["bucket"], self.cfg["key"], self.cfg["secret"]
        )
        self.c = S3Client(ep, lambda: GuardedConnector(policy, limit=16, keepalive_timeout=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.c.close()

    async def upload(self, key: str, total: int) -> None:
        uid = await self.c.create_multipart(key)

        async def put(n: int, body: bytes) -> tuple[int, str]:
            return n, await self.c.upload_part(key, uid, n, body)

        done = await pipelined(total, put)
        await self.c.complete_multipart(key, uid, done)

    async def get(self, key: str, rng: tuple[int, int] | None = None) -> int:
        n = 0
        async with self.c.get(key, rng) as resp:
            async for chunk in resp.content.iter_chunked(MiB):
                n += len(chunk)
        return n

    async def put_small(self, key: str, data: bytes) -> None:
        await self.c.put(key, data)

    async def head(self, key: str) -> int:
        size = await self.c.head(key)
        assert size is not None
        return size

    async def delete(self, key: str) -> None:
        await self.c.delete(key)

    async def list(self, prefix: str) -> int:
        n = 0
        async for _ in self.c.list_objects(prefix):
            n += 1
        return n

    async def presign(self, key: str) -> str:
        return self.c.presign_get(key, 60)


CLIENTS = {"aiobotocore": Aiobotocore, "obstore": Obstore, "pullgate": Pullgate}


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any, int, int]:
    reset_peak()
    before = rss_kib()
    t0 = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t0, out, before, rss_kib("VmHWM")


async def child(name: str, cfg: dict[str, str], total: int) -> dict[str, Any]:
    res: dict[str, Any] = {"client": name, "rss_start_mib": rss_kib() / 1024}
    async with CLIENTS[name](cfg) as c:
        key = f"{name}/big"
        dt, _, before, peak = await timed(lambda: c.upload(key, total))
        res["upload_mibs"] = total / MiB / dt
        res["upload_rss_mib"] = (before / 1024, peak / 1024)
        dt, n, before, peak = await timed(lambda: c.get(key))
        assert n == total, (n, total)
        res["get_mibs"] = total / MiB / dt
        res["get_rss_mib"] = (before / 1024, peak / 1024)
        rng = (total // 10, total // 10 + total // 4)
        dt, n, before, peak = await timed(lambda: c.get(key, rng))
        assert n == rng[1] - rng[0], n
        res["range_mibs"] = n / MiB / dt
        assert await c.head(key) == total
        t0 = time.perf_counter()
        for _ in range(200):
            await c.head(key)
        res["head_ms"] = (time.perf_counter() - t0) / 200 * 1000
        await asyncio.gather(*(c.put_small(f"{name}/many/{i:04d}", b"x" * 100) for i in range(500)))
        t0 = time.perf_counter()
        listed = await c.list(f"{name}/many/")
        res["list500_ms"] = (time.perf_counter() - t0) * 1000
        assert listed == 500, listed
        t0 = time.perf_counter()
        for i in range(200):
            await c.delete(f"{name}/many/{i:04d}")
        res["delete_ms"] = (time.perf_counter() - t0) / 200 * 1000
        t0 = time.perf_counter()
        for _ in range(1000):
            url = await c.presign(key)
        res["presign_us"] = (time.perf_counter() - t0) / 1000 * 1e6
        req = urllib.request.Request(url, headers={"Range": "bytes=0-1048575"})  # noqa: S310 - loopback
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            assert len(r.read()) == MiB
        await c.delete(key)
    return res


def main() -> int:
    global INFLIGHT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--clients", default="aiobotocore,obstore,pullgate")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--inflight", type=int, default=2, help="parts in flight per upload")
    ap.add_argument("--budget", type=float, default=1800)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    INFLIGHT = args.inflight
    if args.child:
        cfg = json.loads(os.environ["S3_BENCH_CFG"])
        print(json.dumps(asyncio.run(child(args.child, cfg, args.mib * MiB))))
        return 0

    from tests.support.gotools import VERSITYGW, build
    from tests.support.s3gw import S3Gateway

    deadline = time.monotonic() + args.budget
    rows: list[dict[str, Any]] = []
    with S3Gateway(build(VERSITYGW)) as gw:
        bucket = gw.create_bucket("bench")
        cfg = {
            "endpoint": gw.url,
            "region": "us-east-1",
            "bucket": bucket,
            "key": gw.access_key,
            "secret": gw.secret_key,
        }
        env = dict(os.environ, S3_BENCH_CFG=json.dumps(cfg))
        for _ in range(args.repeat):
            for name in args.clients.split(","):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit("budget spent")
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        name,
                        "--mib",
                        str(args.mib),
                        "--inflight",
                        f"{args.inflight}",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=left,
                )
                if out.returncode:
                    print(
                        f"{name} failed (exit {out.returncode}):\n{out.stdout[-500:]}{out.stderr[-3000:]}",
                        file=sys.stderr,
                    )
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        f"{'client':12} {'upload MiB/s':>12} {'up RSS MiB':>14} {'get MiB/s':>10} {'get RSS':>12} "
        f"{'range':>7} {'head ms':>8} {'del ms':>7} {'list500':>8} {'presign us':>10}"
    )
    for r in rows:
        print(
            f"{r['client']:12} {r['upload_mibs']:12.0f} {r['upload_rss_mib'][0]:6.0f}->{r['upload_rss_mib'][1]:<6.0f} "
            f"{r['get_mibs']:10.0f} {r['get_rss_mib'][0]:5.0f}->{r['get_rss_mib'][1]:<5.0f} {r['range_mibs']:7.0f} "
            f"{r['head_ms']:8.2f} {r['delete_ms']:7.2f} {r['list500_ms']:8.1f} {r['presign_us']:10.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
