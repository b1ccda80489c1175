"""The pull-through cache (DESIGN.md, "The pull-through cache"), with real processes:
docker-registry upstreams, skopeo, a hostile registry for wrong bytes.

Each test starts its own pullgate with the cache on (the shared harness keeps it off).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from proxy.cache.fs import FilesystemBackend
from proxy.cache.service import Cache
from proxy.store import open_store
from proxy.store.models import Registry as RegistryRow
from tests.support import containerd as ctrd
from tests.support import skopeo
from tests.support.ci import unavailable
from tests.support.client import basic
from tests.support.fronts import CDN, RedirectingFront
from tests.support.hostile import Body, HostileRegistry, repeated, repeated_digest
from tests.support.images import MiB, Pusher, big_layer, oci_image
from tests.support.poll import apoll, poll
from tests.support.postgres import PostgresCluster
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

LICENSE = "lic-cache-test-0123456789abcdef"
AUTH = {"Authorization": basic(LICENSE)}
OCI_ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def _teams(url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "acme",
            "apps": [{"slug": "acme"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.cache.test", "url": url, "insecure": True}
            ],
            "customers": [{"name": "C", "app": "acme", "license_id_env": "PGT_CACHE_LICENSE"}],
        }
    ]


def _proxy(workdir: Path, url: str, **cache: Any) -> Pullgate:
    settings = {
        "cache": {"backend": "filesystem", "path": str(workdir / "cache"), "tag_ttl": 60, **cache},
        "auth": {"license_cache_seconds": 1},
        "pulllog": {"flush_seconds": 0.05},
    }
    return Pullgate(workdir, _teams(url), env={"PGT_CACHE_LICENSE": LICENSE}, settings=settings).start()


def _url(srv: Pullgate, repo: str, kind: str, ref: str) -> str:
    return f"{srv.url}/v2/proxy/acme/up/{repo}/{kind}/{ref}"


async def _get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Any, bytes, str | None]:
    """(status, headers, body, failure): `failure` names the error when the body broke."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async with s.request(method, url, headers={**AUTH, **(headers or {})}) as r:
            try:
                body = await r.read()
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                return r.status, r.headers, b"", type(exc).__name__
            return r.status, r.headers, body, None


def _metric(srv: Pullgate, name: str) -> float:
    with urllib.request.urlopen(srv.admin_url + "/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _cache_marks(srv: Pullgate, action: str) -> list[str | None]:
    with sqlite3.connect(srv.db_path, timeout=10) as db:
        rows = db.execute("SELECT cache FROM pull_logs WHERE action = ? ORDER BY time", (action,))
        return [r[0] for r in rows]


def _upstream_gets(reg: Registry, path: str) -> int:
    """GETs of `path` in docker-registry's access log."""
    return len(re.findall(rf'"GET {re.escape(path)} HTTP', reg.log_text()))


def _cached_files(srv: Pullgate) -> list[Path]:
    return sorted(p for p in (srv.workdir / "cache" / "blobs").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def upstream() -> Iterator[Registry]:
    reg = Registry("none", name="cache-origin")
    try:
        p = Pusher.for_registry(reg)
        reg.images["small"] = oci_image(p, "vendor/small", "v1", [(512 * 1024, "cache-small")])
        reg.images["big"] = oci_image(p, "vendor/big", "v1", [big_layer(200 * MiB, "cache-big")])
        yield reg
    finally:
        reg.stop()


# --- stale serving ----------------------------------------------------------------------


def test_a_copied_image_still_copies_with_the_upstream_stopped(workdir: Path):
    reg = Registry("htpasswd", name="cache-stale")
    srv = None
    try:
        img = oci_image(Pusher.for_registry(reg), "vendor/app", "v1", [(300 * 1024, "stale")])
        teams = _teams(reg.url)
        teams[0]["registries"][0] |= {"username": reg.username, "password_env": "PGT_UP_PW"}
        settings = {"cache": {"backend": "filesystem", "path": str(workdir / "cache"), "tag_ttl": 0}}
        env = {"PGT_CACHE_LICENSE": LICENSE, "PGT_UP_PW": reg.password or ""}
        srv = Pullgate(workdir / "pg", teams, env=env, settings=settings).start()
        creds = f"LICENSE_ID:{LICENSE}"
        base = f"docker://{srv.host}/proxy/acme/up/{img.repo}"
        first = skopeo.copy(f"{base}:v1", workdir / "first", creds=creds)
        assert first.returncode == 0, first.stderr
        # A tag maps to a digest per kind of Accept: this client's kind is cached too.
        assert asyncio.run(_get(_url(srv, img.repo, "manifests", "v1"), OCI_ACCEPT))[0] == 200
        reg.proc.stop()  # the upstream is gone
        for ref, dest in ((f"{base}:v1", "by-tag"), (f"{base}@{img.digest}", "by-digest")):
            res = skopeo.copy(ref, workdir / dest, creds=creds)
            assert res.returncode == 0, f"{ref}: {res.stderr}"
            assert (workdir / dest / "manifest.json").read_bytes() == img.manifest
        status, headers, body, _ = asyncio.run(_get(_url(srv, img.repo, "manifests", "v1"), OCI_ACCEPT))
        assert (status, body) == (200, img.manifest)
        assert headers["Warning"] == '110 - "Response is Stale"'
        assert headers["Docker-Content-Digest"] == img.digest
        assert _metric(srv, "pullgate_cache_stale_serves_total") >= 1
        # A manifest by digest is content: served without a warning.
        status, headers, _, _ = asyncio.run(_get(_url(srv, img.repo, "manifests", img.digest), OCI_ACCEPT))
        assert status == 200 and "Warning" not in headers
    finally:
        if srv is not None:
            srv.stop()
        reg.stop()


def test_with_serve_stale_off_an_upstream_failure_is_the_answer(workdir: Path):
    reg = Registry("none", name="cache-nostale")
    srv = None
    try:
        img = oci_image(Pusher.for_registry(reg), "vendor/app", "v1", [(64 * 1024, "nostale")])
        srv = _proxy(workdir, reg.url, tag_ttl=0, serve_stale=False)
        status, _, body, _ = asyncio.run(_get(_url(srv, img.repo, "manifests", "v1"), OCI_ACCEPT))
        assert (status, body) == (200, img.manifest)
        reg.proc.stop()
        status, _, _, _ = asyncio.run(_get(_url(srv, img.repo, "manifests", "v1"), OCI_ACCEPT))
        assert status in (502, 503, 504)
    finally:
        if srv is not None:
            srv.stop()
        reg.stop()


# --- single flight ------------------------------------------------------------------------


async def test_twenty_concurrent_misses_make_one_upstream_get(workdir: Path, upstream: Registry):
    img = upstream.images["big"]
    digest, size = img.blobs[1]
    srv = _proxy(workdir, upstream.url)
    try:
        path = f"/v2/{img.repo}/blobs/{digest}"
        before = _upstream_gets(upstream, path)

        async def pull() -> tuple[int, str, int]:
            h = hashlib.sha256()
            n = 0
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as s:
                async with s.get(_url(srv, img.repo, "blobs", digest), headers=AUTH) as r:
                    async for chunk in r.content.iter_chunked(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                    return r.status, "sha256:" + h.hexdigest(), n

        results = await asyncio.gather(*(pull() for _ in range(20)))
        assert results == [(200, digest, size)] * 20
        await apoll(lambda: _upstream_gets(upstream, path) > before, 10, "the upstream's access log line")
        assert _upstream_gets(upstream, path) - before == 1
        assert _metric(srv, "pullgate_cache_coalesced_waiters_total") >= 1
        # Now a hit (once published: the clients may finish before the fsync): no upstream GET at all.
        await apoll(lambda: _metric(srv, "pullgate_cache_entries") == 1, 20, "the blob published")
        status, _, body, _ = await _get(_url(srv, img.repo, "blobs", digest))
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest.split(":")[1]
        assert _upstream_gets(upstream, path) - before == 1
        marks = await apoll(lambda: len(_cache_marks(srv, "blob")) == 21 and _cache_marks(srv, "blob"), 10, "log")
        assert marks.count("miss") == 20 and marks[-1] == "hit"
    finally:
        srv.stop()


async def test_followers_get_bytes_while_the_fetch_is_running(workdir: Path):
    """A slow upstream body: a client that joins mid-fetch gets its first byte at once,
    not at the end of the fetch."""
    hostile = HostileRegistry()
    srv = _proxy(workdir, hostile.url)
    try:
        block = bytes(range(256)) * 1024  # 256 KiB
        size = 24 * len(block)
        digest = repeated_digest(block, size)
        hostile.serve(f"/v2/vendor/slow/blobs/{digest}", Body(stream=repeated(block, size, pause=0.25), length=size))
        url = _url(srv, "vendor/slow", "blobs", digest)
        leader = asyncio.create_task(_get(url))
        await apoll(lambda: hostile.bodies_started == 1, 10, "the upstream fetch")
        await asyncio.sleep(0.5)  # let the fetch get ahead; what is measured is the follower
        started = time.monotonic()
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers=AUTH) as r:
                first = await r.content.readany()
                first_byte = time.monotonic() - started
                upstream_done_then = hostile.bodies_finished
                rest = await r.read()
        assert first and first_byte < 1.0, f"first byte after {first_byte:.2f}s"
        assert upstream_done_then == 0, "the follower waited for the end of the fetch"
        assert hashlib.sha256(first + rest).hexdigest() == digest.split(":")[1]
        status, _, body, failure = await leader
        assert (status, failure, len(body)) == (200, None, size)
        assert len(hostile.requests_for(digest)) == 1
    finally:
        srv.stop()
        hostile.stop()


# --- verification -------------------------------------------------------------------------


async def test_wrong_bytes_fail_every_reader_and_nothing_is_kept(workdir: Path):
    hostile = HostileRegistry()
    srv = _proxy(workdir, hostile.url)
    try:
        block = bytes(range(256)) * 1024  # 256 KiB
        good = block * 12
        digest = "sha256:" + hashlib.sha256(good).hexdigest()

        async def bad() -> AsyncIterator[bytes]:
            for i in range(12):
                yield block if i < 11 else block[:-1] + b"\0"  # the same length, the last byte wrong
                await asyncio.sleep(0.2)  # the upstream's pace: every client joins mid-fetch

        path = f"/v2/vendor/evil/blobs/{digest}"
        hostile.serve(path, Body(stream=bad, length=len(good)))
        url = _url(srv, "vendor/evil", "blobs", digest)
        results = await asyncio.gather(*(_get(url) for _ in range(3)))
        for status, _, body, failure in results:
            assert failure is not None, f"a clean {status} with {len(body)} wrong bytes"
        assert len(hostile.requests_for(path)) == 1
        assert _metric(srv, "pullgate_cache_verification_failures_total") == 1
        assert _cached_files(srv) == []
        assert list((workdir / "cache" / "tmp").iterdir()) == []
        # The next request goes upstream again, and the right bytes are kept.
        hostile.serve(path, Body(good))
        status, _, body, failure = await _get(url)
        assert (status, failure, body == good) == (200, None, True)
        assert len(hostile.requests_for(path)) == 2
        await apoll(lambda: len(_cached_files(srv)) == 1, 10, "the verified blob published")
    finally:
        srv.stop()
        hostile.stop()


# --- repositories -------------------------------------------------------------------------


async def test_a_digest_is_served_for_another_repository_only_if_the_upstream_has_it_there(
    workdir: Path, upstream: Registry
):
    img = upstream.images["small"]
    digest = img.blobs[1][0]
    srv = _proxy(workdir, upstream.url)
    try:
        status, _, _, _ = await _get(_url(srv, img.repo, "blobs", digest))
        assert status == 200
        # vendor/other does not hold it upstream: 404, though the bytes are in the cache.
        status, _, body, _ = await _get(_url(srv, "vendor/other", "blobs", digest))
        assert status == 404 and b"BLOB_UNKNOWN" in body
        status, _, _, _ = await _get(_url(srv, "vendor/other", "manifests", img.digest), OCI_ACCEPT)
        assert status == 404
        # A repository that holds it (pushed there too) is confirmed by a HEAD, then served from the cache.
        Pusher.for_registry(upstream).push_blob("vendor/mounted", img.layers[0])
        path = f"/v2/vendor/mounted/blobs/{digest}"
        status, _, body, _ = await _get(_url(srv, "vendor/mounted", "blobs", digest))
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest.split(":")[1]
        assert _upstream_gets(upstream, path) == 0
        await apoll(lambda: f'"HEAD {path} HTTP' in upstream.log_text(), 10, "the confirming HEAD")
    finally:
        srv.stop()


# --- access -------------------------------------------------------------------------------


async def test_a_revoked_license_is_refused_on_a_hit(workdir: Path, upstream: Registry):
    img = upstream.images["small"]
    digest = img.blobs[1][0]
    srv = _proxy(workdir, upstream.url)
    try:
        url = _url(srv, img.repo, "blobs", digest)
        assert (await _get(url))[0] == 200
        assert (await _get(url))[0] == 200  # a hit
        srv.set_license_status(LICENSE, "revoked")
        revoked_at = time.monotonic()
        await apoll(lambda: _status(url), 10, "the revocation to bite")
        assert time.monotonic() - revoked_at < 5  # auth.license_cache_seconds is 1 here
        status, _, body, _ = await _get(url)
        assert status == 401 and body.count(b"UNAUTHORIZED") + body.count(b"DENIED") >= 1
    finally:
        srv.stop()


async def _status(url: str) -> bool:
    return (await _get(url, method="HEAD"))[0] == 401


async def test_an_allowlist_is_applied_before_the_cache(workdir: Path, upstream: Registry):
    img = upstream.images["small"]
    srv = _proxy(workdir, upstream.url)
    try:
        assert (await _get(_url(srv, img.repo, "manifests", "v1"), OCI_ACCEPT))[0] == 200
    finally:
        srv.stop()
    # Same cache, restarted with an allowlist that leaves the repository out: refused.
    teams = _teams(upstream.url)
    teams[0]["apps"] = [{"slug": "acme"}]
    with sqlite3.connect(workdir / "pullgate.db") as db:
        db.execute("UPDATE apps SET image_allowlist = ?", ('["vendor/only-this"]',))
    srv = _proxy(workdir, upstream.url)
    try:
        status, _, _, _ = await _get(_url(srv, img.repo, "manifests", "v1"), OCI_ACCEPT)
        assert status == 404
        assert _metric(srv, "pullgate_cache_hits_total") == 0
    finally:
        srv.stop()


# --- tags ---------------------------------------------------------------------------------


async def test_a_moved_tag_is_served_once_tag_ttl_passed(workdir: Path):
    reg = Registry("none", name="cache-tags")
    srv = None
    try:
        p = Pusher.for_registry(reg)
        one = oci_image(p, "vendor/moving", "v1", [(32 * 1024, "one")])
        srv = _proxy(workdir, reg.url, tag_ttl=2)
        url = _url(srv, one.repo, "manifests", "v1")
        status, headers, _, _ = await _get(url, OCI_ACCEPT)
        assert (status, headers["Docker-Content-Digest"]) == (200, one.digest)
        cached_at = time.monotonic()
        two = oci_image(p, "vendor/moving", "v1", [(32 * 1024, "two")])

        async def served() -> str | None:
            return (await _get(url, OCI_ACCEPT))[1].get("Docker-Content-Digest")

        if time.monotonic() - cached_at < 1.5:  # still within tag_ttl: the cached digest, no upstream call
            assert await served() == one.digest
        await apoll(lambda: _is(served(), two.digest), 10, "the new digest")
        # Gone upstream: a 404 once the tag is revalidated, never the last digest.
        _delete_manifest(reg, "vendor/moving", two.digest)
        await apoll(lambda: _is(_status_of(url), 404), 10, "the 404")
    finally:
        if srv is not None:
            srv.stop()
        reg.stop()


async def _is(value: Any, want: Any) -> bool:
    return (await value) == want


async def _status_of(url: str) -> int:
    return (await _get(url, OCI_ACCEPT))[0]


def _delete_manifest(reg: Registry, repo: str, digest: str) -> None:
    """The test registry allows deletes."""
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{digest}", method="DELETE")  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        assert r.status == 202


# --- eviction and restarts -------------------------------------------------------------------


async def test_eviction_never_breaks_a_reader(workdir: Path):
    reg = Registry("none", name="cache-evict")
    srv = None
    try:
        p = Pusher.for_registry(reg)
        a = oci_image(p, "vendor/a", "v1", [(24 * MiB, "evict-a")])
        b = oci_image(p, "vendor/b", "v1", [(24 * MiB, "evict-b")])
        (da, size_a), (db, _) = a.blobs[1], b.blobs[1]
        srv = _proxy(workdir, reg.url, max_size="40MiB")
        assert (await _get(_url(srv, a.repo, "blobs", da)))[0] == 200
        path_a = workdir / "cache" / "blobs" / "sha256" / da[7:9] / da[7:]
        await apoll(path_a.exists, 10, "A published")
        await apoll(lambda: _metric(srv, "pullgate_cache_entries") == 1, 10, "A in the index")
        h = hashlib.sha256()
        got = 0
        async with aiohttp.ClientSession(read_bufsize=64 * 1024) as s:
            async with s.get(_url(srv, a.repo, "blobs", da), headers=AUTH) as r:
                chunk = await r.content.read(64 * 1024)
                h.update(chunk)
                got += len(chunk)
                # The reader stalls; another blob pushes A out of the cache.
                assert (await _get(_url(srv, b.repo, "blobs", db)))[0] == 200
                await apoll(lambda: not path_a.exists(), 10, "A's eviction")
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    got += len(chunk)
        assert got == size_a and "sha256:" + h.hexdigest() == da
        assert _metric(srv, "pullgate_cache_evictions_total") >= 1
        assert _metric(srv, "pullgate_cache_size_bytes") <= 40 * MiB
    finally:
        if srv is not None:
            srv.stop()
        reg.stop()


async def test_the_index_survives_a_restart_and_a_crash_leaves_nothing(workdir: Path, upstream: Registry):
    img = upstream.images["small"]
    digest = img.blobs[1][0]
    srv = _proxy(workdir, upstream.url)
    try:
        assert (await _get(_url(srv, img.repo, "blobs", digest)))[0] == 200
    finally:
        srv.stop()
    leftover = workdir / "cache" / "tmp" / "sha256-dead.beef.part"
    leftover.write_bytes(b"half a blob")
    srv = _proxy(workdir, upstream.url)
    try:
        assert not leftover.exists()
        path = f"/v2/{img.repo}/blobs/{digest}"
        before = _upstream_gets(upstream, path)
        status, _, body, _ = await _get(_url(srv, img.repo, "blobs", digest))
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest[7:]
        assert _metric(srv, "pullgate_cache_hits_total") == 1
        assert _upstream_gets(upstream, path) == before
        # A range of a hit.
        status, headers, body, _ = await _get(_url(srv, img.repo, "blobs", digest), {"Range": "bytes=10-19"})
        assert status == 206 and len(body) == 10 and headers["Content-Range"].startswith("bytes 10-19/")
    finally:
        srv.stop()


async def test_an_index_lost_from_the_store_is_rebuilt_from_disk(workdir: Path, upstream: Registry):
    img = upstream.images["small"]
    digest = img.blobs[1][0]
    srv = _proxy(workdir, upstream.url)
    try:
        assert (await _get(_url(srv, img.repo, "blobs", digest)))[0] == 200
    finally:
        srv.stop()
    with sqlite3.connect(workdir / "pullgate.db") as db:
        db.execute("DELETE FROM cache_entries")
        db.execute("DELETE FROM cache_bindings")
    srv = _proxy(workdir, upstream.url)
    try:
        path = f"/v2/{img.repo}/blobs/{digest}"
        before = _upstream_gets(upstream, path)
        status, _, body, _ = await _get(_url(srv, img.repo, "blobs", digest))
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest[7:]
        # Taken in from disk without a binding: confirmed by a HEAD, never fetched again.
        assert _upstream_gets(upstream, path) == before
        assert _metric(srv, "pullgate_cache_hits_total") == 1
    finally:
        srv.stop()


# --- the index in PostgreSQL ------------------------------------------------------------------


async def test_the_index_round_trips_through_postgresql(cluster: PostgresCluster, tmp_path: Path):
    name = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(cluster.dsn())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    store = await open_store(cluster.dsn(name), tmp_path)
    try:
        team = await store.ensure_team("acme")
        reg = RegistryRow("r1", team.id, "up", "other", "up.test", "http://up.test", True, None, None)
        await store.put_registry(reg)
        cache = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 20, 60, True)
        await cache.start()
        body = b'{"schemaVersion": 2}'
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        await cache.keep(digest, body, OCI_ACCEPT["Accept"], ("r1", "vendor/a"))
        await cache.keep(digest, body, OCI_ACCEPT["Accept"], ("r1", "vendor/a"))  # upserts, idempotent
        cache.set_tag(("r1", "vendor/a", "v1", "*"), digest, OCI_ACCEPT["Accept"])
        cache.set_tag(("r1", "vendor/a", "v1", "*"), digest, OCI_ACCEPT["Accept"])
        await cache.open(digest)
        await cache.close()
        again = Cache(FilesystemBackend(tmp_path / "c"), store, 1 << 20, 60, True)
        await again.start()
        assert again.bound(digest, ("r1", "vendor/a")) and again.tag(("r1", "vendor/a", "v1", "*")) is not None
        assert (await again.purge({"r1"})).deleted == 1
        await again.close()
        rows = await store.fetchall("SELECT COUNT(*) AS n FROM cache_entries")
        assert rows[0]["n"] == 0
        # A deleted registry takes its bindings and tags along.
        await again.keep(digest, body, OCI_ACCEPT["Accept"], ("r1", "vendor/a"))
        await again.persist.flush()
        await store.delete_registry(team.id, "up")
        assert (await store.fetchall("SELECT COUNT(*) AS n FROM cache_bindings"))[0]["n"] == 0
    finally:
        await store.close()


# --- providers and clients --------------------------------------------------------------------


async def test_a_redirected_blob_is_cached_never_the_redirect(workdir: Path):
    """ECR/Docker Hub/GHCR answer blob GETs with a redirect to S3 or a CDN: the bytes are
    cached, and a hit is a 200 with them (no redirect, no signed URL, no second CDN GET)."""
    anon = Registry("none", name="cache-redirect-origin")
    cdn = CDN(anon.url)
    front = RedirectingFront(anon.url, "vendor", "canary-front-pw", cdn)
    srv = None
    try:
        img = oci_image(anon, "redirect/app", "v1", layers=[(1_500_000, "redirected")])
        teams = _teams(front.url)
        teams[0]["registries"][0] |= {"username": "vendor", "password_env": "PGT_FRONT_PW"}
        settings = {"cache": {"backend": "filesystem", "path": str(workdir / "cache")}}
        env = {"PGT_CACHE_LICENSE": LICENSE, "PGT_FRONT_PW": "canary-front-pw"}
        srv = Pullgate(workdir / "pg", teams, env=env, settings=settings).start()
        digest, size = img.blobs[1]
        url = _url(srv, img.repo, "blobs", digest)
        for _ in range(3):
            status, headers, body, failure = await _get(url)
            assert (status, failure, len(body)) == (200, None, size)
            assert "Location" not in headers and hashlib.sha256(body).hexdigest() == digest[7:]
            await apoll(lambda: _metric(srv, "pullgate_cache_entries") >= 1, 20, "the blob published")
        assert (front.redirected, cdn.served, cdn.with_credentials) == (1, 1, 0)
        assert _metric(srv, "pullgate_cache_hits_total") == 2
        assert "X-Amz-Signature" not in srv.log_text() and "canary-front-pw" not in srv.log_text()
    finally:
        if srv is not None:
            srv.stop()
        front.stop()
        cdn.stop()
        anon.stop()


def test_containerd_pulls_from_the_cache(workdir: Path, upstream: Registry):
    """Two nodes (two containerd daemons, each with its own content store) fetch one image:
    the second gets every manifest and blob from the cache."""
    reason = ctrd.available()
    if reason:
        unavailable(reason)
    img = upstream.images["small"]
    srv = _proxy(workdir, upstream.url)
    try:
        ref = f"{srv.host}/proxy/acme/up/{img.repo}:{img.tag}"
        paths = [f"/v2/{img.repo}/blobs/{d}" for d, _ in img.blobs]
        before = sum(_upstream_gets(upstream, p) for p in paths)
        for node in range(2):
            with ctrd.Containerd() as daemon:
                res = daemon.ctr(["content", "fetch", "--plain-http", "--user", f"LICENSE_ID:{LICENSE}", ref])
                assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
                assert daemon.ctr_bytes(["content", "get", img.digest]) == img.manifest
                for d, _ in img.blobs:
                    assert hashlib.sha256(daemon.ctr_bytes(["content", "get", d])).hexdigest() == d[7:]
            if node == 0:
                poll(lambda: _metric(srv, "pullgate_cache_entries") >= 3, 20, "manifest and blobs published")
        assert sum(_upstream_gets(upstream, p) for p in paths) - before == len(paths)  # the first node's only
        assert _metric(srv, "pullgate_cache_hits_total") >= 1 + len(paths)
        marks = poll(lambda: _cache_marks(srv, "blob"), 10, "pull log rows")
        assert "hit" in marks
    finally:
        srv.stop()
