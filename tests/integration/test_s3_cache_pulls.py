"""Pulls through the cache on S3 (`cache.backend: s3`): a real pullgate, a real
docker-registry upstream and the Versity S3 Gateway on loopback as the bucket.

The object layer itself (multipart, publish only when verified, ranges, presigning) is
tested in test_s3_cache.py; here the cache serves pulls from it, and with
`cache.s3.redirect` a licensed blob hit is a 307 to a presigned GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.integration.test_cache import (
    AUTH,
    LICENSE,
    _cache_marks,
    _get,
    _metric,
    _teams,
    _upstream_gets,
    _url,
)
from tests.support import containerd as ctrd
from tests.support import skopeo
from tests.support.ci import unavailable
from tests.support.images import MiB, Pusher, big_layer, oci_image
from tests.support.poll import apoll, poll
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry
from tests.support.s3gw import REGION, S3Gateway


@pytest.fixture(scope="module")
def upstream() -> Iterator[Registry]:
    reg = Registry("none", name="s3-cache-origin")
    try:
        p = Pusher.for_registry(reg)
        reg.images["mid"] = oci_image(p, "vendor/mid", "v1", [big_layer(24 * MiB, "s3-cache-mid")])
        yield reg
    finally:
        reg.stop()


def _proxy(workdir: Path, url: str, gw: S3Gateway, bucket: str, redirect: bool, anonymous: bool = False) -> Pullgate:
    settings: dict[str, Any] = {
        "cache": {
            "backend": "s3",
            "path": str(workdir / "cache"),  # the local spool followers tail during a fill
            "s3": {
                "bucket": bucket,
                "endpoint_url": gw.url,
                "region": REGION,
                "access_key_id": gw.access_key,
                "secret_access_key_env": "PGT_S3_SECRET",
                "redirect": redirect,
            },
        },
        "auth": {"license_cache_seconds": 1},
        "pulllog": {"flush_seconds": 0.05},
    }
    env = {"PGT_CACHE_LICENSE": LICENSE, "PGT_S3_SECRET": gw.secret_key}
    teams = _teams(url)
    teams[0]["registries"][0]["allow_anonymous"] = anonymous
    return Pullgate(workdir, teams, env=env, settings=settings).start()


async def _wait_for_object(gw: S3Gateway, bucket: str, digest: str) -> None:
    hexpart = digest.split(":", 1)[1]
    key = f"blobs/sha256/{hexpart[:2]}/{hexpart}"
    await apoll(lambda: gw.signed("HEAD", f"/{bucket}/{key}")[0] == 200, timeout=20, what="the published object")


async def _wait_until_held(srv: Pullgate, entries: int = 1) -> None:
    """The object is in the bucket a moment before the proxy's index holds it (the fill's
    last step): a request in between is still a miss, so wait for the index itself."""

    async def held() -> bool:
        async with aiohttp.ClientSession() as s, s.get(srv.admin_url + "/metrics") as r:
            found = re.search(r"^pullgate_cache_entries (\S+)$", await r.text(), re.M)
        return found is not None and float(found.group(1)) >= entries

    await apoll(held, timeout=20, what="the cache index holding the object")


async def test_a_blob_fetched_once_is_served_from_the_bucket(
    tmp_path: Path, upstream: Registry, s3gw: S3Gateway, s3_bucket: str
):
    srv = _proxy(tmp_path, upstream.url, s3gw, s3_bucket, redirect=False)
    try:
        digest, size = upstream.images["mid"].blobs[-1]
        url = _url(srv, "vendor/mid", "blobs", digest)
        gets = _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}")  # the module's upstream
        status, _, first, failure = await _get(url)
        assert (status, failure, len(first)) == (200, None, size)
        assert "sha256:" + hashlib.sha256(first).hexdigest() == digest
        await _wait_for_object(s3gw, s3_bucket, digest)
        await _wait_until_held(srv)
        status, _, second, failure = await _get(url)
        assert (status, failure) == (200, None) and second == first
        # One upstream GET: the second came out of the bucket.
        assert _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}") == gets + 1
        await apoll(lambda: len(_cache_marks(srv, "blob")) >= 2, timeout=10, what="pull-log rows")
        assert _cache_marks(srv, "blob") == ["miss", "hit"]
        async with aiohttp.ClientSession() as s, s.get(srv.admin_url + "/readyz") as r:
            assert r.status == 200  # the bucket answers: ready
    finally:
        srv.stop()


async def test_redirect_offload_sends_licensed_hits_to_a_presigned_get(
    tmp_path: Path, upstream: Registry, s3gw: S3Gateway, s3_bucket: str
):
    srv = _proxy(tmp_path, upstream.url, s3gw, s3_bucket, redirect=True)
    try:
        digest, size = upstream.images["mid"].blobs[-1]
        url = _url(srv, "vendor/mid", "blobs", digest)
        status, _, body, _ = await _get(url)  # a miss streams through the proxy and fills the bucket
        assert status == 200 and len(body) == size
        await _wait_for_object(s3gw, s3_bucket, digest)
        await _wait_until_held(srv)
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers=AUTH, allow_redirects=False) as r:
                assert r.status == 307
                location = r.headers["Location"]
                assert r.headers["Docker-Content-Digest"] == digest
            assert location.startswith(s3gw.url + "/") and "X-Amz-Signature=" in location
            assert "X-Amz-Expires=60" in location
            assert LICENSE not in location and s3gw.secret_key not in location
            # The client follows it without any credential of ours and gets the verified bytes.
            async with s.get(location) as r:
                fetched = await r.read()
                assert r.status == 200 and hashlib.sha256(fetched).hexdigest() == digest.split(":", 1)[1]
            # Without a license: refused before the cache is asked, so no URL.
            async with s.get(url, allow_redirects=False) as r:
                assert r.status == 401 and "Location" not in r.headers
            # A Range on a hit is served by the proxy itself (a part, not a redirect).
            async with s.get(url, headers={**AUTH, "Range": "bytes=0-9"}, allow_redirects=False) as r:
                assert r.status == 206 and len(await r.read()) == 10
            # The bucket sent the redirected blob: the customer's egress counts it all the same.
            # (The rows, in any order: the miss, the 307 counted whole, the proxy's 10-byte part.)
            want = sorted([("miss", size), ("hit", size), ("hit", 10)])
            await apoll(lambda: sorted(_blob_rows(srv)) == want, timeout=10, what="the redirect's log row")
            # An object gone from the bucket behind this replica's back (another one evicted it):
            # no client is sent to its 404; the proxy fetches it again.
            hexpart = digest.split(":", 1)[1]
            gets = _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}")
            assert s3gw.signed("DELETE", f"/{s3_bucket}/blobs/sha256/{hexpart[:2]}/{hexpart}")[0] == 204
            async with s.get(url, headers=AUTH, allow_redirects=False) as r:
                assert r.status == 200 and hashlib.sha256(await r.read()).hexdigest() == hexpart
        assert _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}") == gets + 1
    finally:
        srv.stop()


def _relays(srv: Pullgate, outcome: str) -> float:
    return _metric(srv, f'pullgate_cache_relays_total{{outcome="{outcome}"}}')


def _read_some_then_hang_up(url: str, n: int) -> int:
    """A raw GET of `url` that reads `n` bytes of the answer and closes the connection."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the proxy cannot run far ahead
    sock.settimeout(20)
    try:
        sock.connect((parts.hostname, parts.port))
        head = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {AUTH['Authorization']}\r\n\r\n"
        sock.sendall(head.encode())
        got = 0
        while got < n and (chunk := sock.recv(65536)):
            got += len(chunk)
        return got
    finally:
        sock.close()


async def test_a_large_hit_is_relayed_by_a_thread_exactly(
    tmp_path: Path, upstream: Registry, s3gw: S3Gateway, s3_bucket: str
):
    """A hit of 8 MiB or more: the relay thread GETs it from the bucket and writes it to the
    client's socket (the whole object, a Range); a small Range stays on the event loop; a
    client that hangs up mid-body leaves the proxy serving the next."""
    srv = _proxy(tmp_path, upstream.url, s3gw, s3_bucket, redirect=False)
    try:
        digest, size = upstream.images["mid"].blobs[-1]
        url = _url(srv, "vendor/mid", "blobs", digest)
        gets = _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}")  # the upstream is the module's
        status, _, whole, _ = await _get(url)  # the miss that fills the bucket
        assert status == 200 and len(whole) == size and size >= 16 * MiB
        await _wait_for_object(s3gw, s3_bucket, digest)
        await _wait_until_held(srv)
        assert _relays(srv, "done") == 0
        status, headers, body, failure = await _get(url)
        assert (status, failure, headers["Content-Length"], body == whole) == (200, None, str(size), True)
        assert _relays(srv, "done") == 1
        lo, hi = MiB + 1, size - 3
        status, headers, body, failure = await _get(url, {"Range": f"bytes={lo}-{hi}"})
        assert (status, failure, headers["Content-Range"]) == (206, None, f"bytes {lo}-{hi}/{size}")
        assert body == whole[lo : hi + 1] and _relays(srv, "done") == 2
        status, _, body, _ = await _get(url, {"Range": "bytes=10-1000"})  # small: the loop's path
        assert (status, body, _relays(srv, "done")) == (206, whole[10:1001], 2)
        assert await asyncio.to_thread(_read_some_then_hang_up, url, 2 * MiB) >= 2 * MiB
        await apoll(lambda: _relays(srv, "client") == 1, timeout=20, what="the relay ending for the client gone")
        status, _, body, failure = await _get(url)  # and the proxy serves on
        assert (status, failure, body == whole) == (200, None, True)
        # Keep-alive: the connection a relay wrote to goes on serving requests (one connection).
        made: list[object] = []
        trace = aiohttp.TraceConfig()

        async def created(*args: object) -> None:
            made.append(args)

        trace.on_connection_create_end.append(created)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as s:
            for start, stop in ((0, size), (MiB, 9 * MiB + 1), (0, 100)):
                rng = f"bytes={start}-{stop - 1}"
                async with s.get(url, headers={**AUTH, "Range": rng}) as r:
                    assert (r.status, await r.read() == whole[start:stop]) == (206, True)
        assert len(made) == 1
        assert _relays(srv, "done") == 5 and _relays(srv, "upstream") == _relays(srv, "fallback") == 0
        assert _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}") == gets + 1
    finally:
        srv.stop()


def _blob_rows(srv: Pullgate) -> list[tuple[str | None, int]]:
    with sqlite3.connect(srv.db_path, timeout=10) as db:
        rows = db.execute("SELECT cache, bytes FROM pull_logs WHERE action = 'blob' ORDER BY time")
        return [(r[0], r[1]) for r in rows]


async def test_the_bucket_configured_from_the_environment_alone(
    tmp_path: Path, upstream: Registry, s3gw: S3Gateway, s3_bucket: str
):
    # The file says `cache.backend: none` and has no s3 block: PULLGATE_CACHE_S3_* make it,
    # as a container or a chart sets them (the secret by reference, through _ENV).
    env = {
        "PGT_CACHE_LICENSE": LICENSE,
        "PGT_S3_SECRET": s3gw.secret_key,
        "PULLGATE_CACHE_BACKEND": "s3",
        "PULLGATE_CACHE_S3_BUCKET": s3_bucket,
        "PULLGATE_CACHE_S3_ENDPOINT_URL": s3gw.url,
        "PULLGATE_CACHE_S3_REGION": REGION,
        "PULLGATE_CACHE_S3_ACCESS_KEY_ID": s3gw.access_key,
        "PULLGATE_CACHE_S3_SECRET_ACCESS_KEY_ENV": "PGT_S3_SECRET",
        "PULLGATE_CACHE_S3_REDIRECT": "true",
    }
    srv = Pullgate(tmp_path, _teams(upstream.url), env=env, settings={"pulllog": {"flush_seconds": 0.05}}).start()
    try:
        async with aiohttp.ClientSession() as s, s.get(srv.admin_url + "/readyz") as r:
            assert (r.status, (await r.json()).get("cache")) == (200, True)  # the bucket is asked
        digest, size = upstream.images["mid"].blobs[-1]
        url = _url(srv, "vendor/mid", "blobs", digest)
        status, _, body, failure = await _get(url)
        assert (status, failure, len(body)) == (200, None, size)
        await _wait_for_object(s3gw, s3_bucket, digest)
        await _wait_until_held(srv)
        async with aiohttp.ClientSession() as s, s.get(url, headers=AUTH, allow_redirects=False) as r:
            assert r.status == 307  # PULLGATE_CACHE_S3_REDIRECT=true, read as a boolean
    finally:
        srv.stop()


def test_skopeo_and_containerd_follow_the_redirect_to_the_bucket(
    tmp_path: Path, upstream: Registry, s3gw: S3Gateway, s3_bucket: str
):
    """With `cache.s3.redirect`, the real clients pull an image whose blobs are 307s to
    presigned GETs: they follow them to the bucket (without our credentials: Go drops the
    Authorization header on a redirect to another host:port) and get the verified bytes,
    while the proxy itself sends only the manifest."""
    reason = ctrd.available()
    if reason:
        unavailable(reason)
    img = upstream.images["mid"]
    srv = _proxy(tmp_path, upstream.url, s3gw, s3_bucket, redirect=True)
    try:
        creds = f"LICENSE_ID:{LICENSE}"
        ref = f"{srv.host}/proxy/acme/up/{img.repo}:{img.tag}"
        first = skopeo.copy(f"docker://{ref}", tmp_path / "fill", creds=creds)  # misses: streamed, filled
        assert first.returncode == 0, first.stderr[-2000:]
        for digest, _ in img.blobs:
            asyncio.run(_wait_for_object(s3gw, s3_bucket, digest))
        asyncio.run(_wait_until_held(srv, entries=len(img.blobs) + 1))  # the blobs and the manifest
        gets = sum(_upstream_gets(upstream, f"/v2/{img.repo}/blobs/{d}") for d, _ in img.blobs)
        served = _metric(srv, 'pullgate_cache_bytes_total{source="cache"}')

        res = skopeo.copy(f"docker://{ref}", tmp_path / "skopeo", creds=creds)
        assert res.returncode == 0, res.stderr[-2000:]
        assert (tmp_path / "skopeo" / "manifest.json").read_bytes() == img.manifest
        for digest, size in img.blobs:
            data = (tmp_path / "skopeo" / digest.split(":", 1)[1]).read_bytes()
            assert len(data) == size and "sha256:" + hashlib.sha256(data).hexdigest() == digest
        with ctrd.Containerd() as daemon:
            res = daemon.ctr(["content", "fetch", "--plain-http", "--user", creds, ref])
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            assert daemon.ctr_bytes(["content", "get", img.digest]) == img.manifest
            for digest, _ in img.blobs:
                assert "sha256:" + hashlib.sha256(daemon.ctr_bytes(["content", "get", digest])).hexdigest() == digest

        # Every blob came from the bucket: no upstream GET, and out of the proxy only manifests.
        assert sum(_upstream_gets(upstream, f"/v2/{img.repo}/blobs/{d}") for d, _ in img.blobs) == gets
        assert _metric(srv, 'pullgate_cache_bytes_total{source="cache"}') - served <= 4 * len(img.manifest)
        n = len(img.blobs)
        rows = poll(lambda: len(_blob_rows(srv)) >= 3 * n and _blob_rows(srv)[-2 * n :], 10, "pull-log rows")
        assert {mark for mark, _ in rows} == {"hit"}
        assert sorted(size for _, size in rows) == sorted(size for _, size in img.blobs * 2)
    finally:
        srv.stop()


async def test_an_anonymous_pull_is_never_sent_a_presigned_url(
    tmp_path: Path, upstream: Registry, s3gw: S3Gateway, s3_bucket: str
):
    """A registry given away on /v2/anonymous/: its hits are streamed by the proxy even with
    `cache.s3.redirect` (a signed URL is a credential; an anonymous client gets none), while a
    licensed hit of the same blob is a 307."""
    srv = _proxy(tmp_path, upstream.url, s3gw, s3_bucket, redirect=True, anonymous=True)
    try:
        digest, size = upstream.images["mid"].blobs[-1]
        licensed = _url(srv, "vendor/mid", "blobs", digest)
        anonymous = f"{srv.url}/v2/anonymous/up/vendor/mid/blobs/{digest}"
        gets = _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}")  # the module's upstream
        status, _, body, _ = await _get(licensed)
        assert status == 200 and len(body) == size
        await _wait_for_object(s3gw, s3_bucket, digest)
        await _wait_until_held(srv)
        async with aiohttp.ClientSession() as s:
            async with s.get(licensed, headers=AUTH, allow_redirects=False) as r:
                assert r.status == 307 and "X-Amz-Signature=" in r.headers["Location"]
            scope = {"scope": "repository:anonymous/up/vendor/mid:pull"}
            async with s.get(f"{srv.url}/v2/token", params=scope) as r:  # the anonymous token flow
                assert r.status == 200
                bearer = {"Authorization": f"Bearer {(await r.json())['token']}"}
            for _ in range(2):
                async with s.get(anonymous, headers=bearer, allow_redirects=False) as r:
                    data = await r.read()
                    assert r.status == 200 and "Location" not in r.headers
                    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        assert _upstream_gets(upstream, f"/v2/vendor/mid/blobs/{digest}") == gets + 1  # then hits, from the bucket
    finally:
        srv.stop()
