"""Run as a program: upload N MiB through the S3 cache backend and report the process's
peak RSS (VmHWM) after a first stretch and at the end, as JSON on stdout.

`python -m tests.support.s3_upload_probe` with S3_PROBE (JSON: endpoint, bucket, key,
secret, mib, spool). The bytes come from an async source of 256 KiB chunks (fresh bytes
each, as a socket gives them), hashed on the way as the cache's verifier does; the object is
published only when the digest matches, then its size is checked with HEAD.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from proxy.cache.s3client import S3Client, S3Endpoint, make_connector
from proxy.cache.s3store import S3Backend

MiB = 1 << 20
CHUNK = 256 * 1024
FIRST = 64 * MiB  # peak RSS is read here, then at the end: the difference is what size costs


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def chunks(total: int) -> list[int]:
    return [min(CHUNK, total - off) for off in range(0, total, CHUNK)]


async def main(cfg: dict[str, str]) -> dict[str, float]:
    total = int(cfg["mib"]) * MiB
    block = hashlib.shake_256(b"s3-probe").digest(4 * MiB)

    def piece(off: int, n: int) -> bytes:
        start = off % (len(block) - CHUNK)
        return block[start : start + n]

    expected = hashlib.sha256()
    for off, n in zip(range(0, total, CHUNK), chunks(total), strict=True):
        expected.update(piece(off, n))
    digest = f"sha256:{expected.hexdigest()}"

    ep = S3Endpoint(cfg["endpoint"], "us-east-1", cfg["bucket"], cfg["key"], cfg["secret"])
    backend = S3Backend(S3Client(ep, make_connector), "probe/", Path(cfg["spool"]))
    await backend.start()
    out: dict[str, float] = {}
    try:
        upload = await backend.begin(digest)
        hasher = hashlib.sha256()
        for off, n in zip(range(0, total, CHUNK), chunks(total), strict=True):
            data = piece(off, n)
            hasher.update(data)
            await upload.write(data)
            if off + n == FIRST:
                out["peak_first_mib"] = peak_kib() / 1024
        assert f"sha256:{hasher.hexdigest()}" == digest
        await upload.publish()
        out["peak_end_mib"] = peak_kib() / 1024
        out["size"] = float(await backend.size(digest) or -1)
    finally:
        await backend.close()
    return out


if __name__ == "__main__":
    result = asyncio.run(main(json.loads(os.environ["S3_PROBE"])))
    sys.stdout.write(json.dumps(result) + "\n")
