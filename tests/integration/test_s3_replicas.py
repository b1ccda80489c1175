"""Two replicas, one cluster: two `pullgate serve` processes on their own ports sharing one
PostgreSQL store, one keyring and one bucket (the Versity S3 Gateway), in front of a real
docker-registry. What one replica fetched is a hit on the other; a revocation made on one
bites on the other; pulls of one uncached blob spread over both make at most one upstream
GET per replica and store the object once (the fill lease, proxy.cache.lease)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.test_cache import _metric, _upstream_gets
from tests.integration.test_postgres import fresh_db
from tests.support.images import MiB, Pusher, big_layer, oci_image
from tests.support.poll import apoll
from tests.support.postgres import PostgresCluster
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry
from tests.support.s3gw import REGION, S3Gateway

Cluster = tuple[list[Pullgate], str, str]  # (replicas, vendor API token, license ID)


@pytest.fixture(scope="module")
def origin() -> Iterator[Registry]:
    reg = Registry("none", name="replicas-origin")
    try:
        p = Pusher.for_registry(reg)
        reg.images["shared"] = oci_image(p, "vendor/shared", "v1", [big_layer(8 * MiB, "replicas-shared")])
        reg.images["wide"] = oci_image(p, "vendor/wide", "v1", [big_layer(32 * MiB, "replicas-wide")])
        # The size-limit test's own two (the module's upstream log counts GETs per blob).
        reg.images["older"] = oci_image(p, "vendor/older", "v1", [big_layer(8 * MiB, "replicas-older")])
        reg.images["newer"] = oci_image(p, "vendor/newer", "v1", [big_layer(8 * MiB, "replicas-newer")])
        reg.images["purged"] = oci_image(p, "vendor/purged", "v1", [big_layer(4 * MiB, "replicas-purged")])
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest,
    cluster: PostgresCluster,
    origin: Registry,
    s3gw: S3Gateway,
    s3_bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Two replicas; a test's indirect parameter adds to their `cache` settings."""
    cache_extra: dict[str, Any] = getattr(request, "param", {})
    dsn = asyncio.run(fresh_db(cluster))
    token = "pgt_rp_" + secrets.token_hex(16)
    license_id = "lic-rp-" + secrets.token_hex(16)
    keys = tmp_path_factory.mktemp("rp-keys") / "keys.yaml"  # the one keyring every replica reads
    env = {"RP_TOKEN": token, "RP_LIC": license_id, "RP_S3_SECRET": s3gw.secret_key}
    teams = [
        {
            "name": "scaled",
            "api_tokens": [{"token_env": "RP_TOKEN"}],
            "apps": [{"slug": "rp-app"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.rp.test", "url": origin.url, "insecure": True}
            ],
            "customers": [{"name": "Fleet", "app": "rp-app", "license_id_env": "RP_LIC"}],
        }
    ]
    servers: list[Pullgate] = []
    try:
        for name in ("rp-a", "rp-b"):
            workdir = tmp_path_factory.mktemp(name)
            settings: dict[str, Any] = {
                "store": dsn,
                "keys": {"file": str(keys)},
                "cache": {
                    "backend": "s3",
                    "path": str(workdir / "cache"),  # each replica's own spool
                    "s3": {
                        "bucket": s3_bucket,
                        "endpoint_url": s3gw.url,
                        "region": REGION,
                        "access_key_id": s3gw.access_key,
                        "secret_access_key_env": "RP_S3_SECRET",
                    },
                    **cache_extra,
                },
                "auth": {"license_cache_seconds": 1},
                "pulllog": {"flush_seconds": 0.05},
            }
            servers.append(Pullgate(workdir, teams, env=env, settings=settings, name=name).start())
        yield servers, token, license_id
    finally:
        for s in servers:
            s.stop()


def _blob_url(srv: Pullgate, repo: str, digest: str) -> str:
    return f"{srv.url}/v2/proxy/rp-app/up/{repo}/blobs/{digest}"


def _auth(license_id: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()}


async def _pull(session: aiohttp.ClientSession, url: str, license_id: str) -> tuple[int, str]:
    """(status, sha256 of the body), hashed as it streams: a hundred bodies are never held."""
    async with session.get(url, headers=_auth(license_id)) as r:
        h = hashlib.sha256()
        async for piece in r.content.iter_chunked(1 << 20):
            h.update(piece)
        return r.status, "sha256:" + h.hexdigest()


def _bucket_keys(gw: S3Gateway, bucket: str) -> list[str]:
    status, body = gw.signed("GET", f"/{bucket}?list-type=2")
    assert status == 200
    return re.findall(r"<Key>([^<]+)</Key>", body.decode())


def _pending_uploads(gw: S3Gateway, bucket: str) -> int:
    status, body = gw.signed("GET", f"/{bucket}?uploads")
    assert status == 200
    return body.decode().count("<Upload>")


async def test_a_fill_on_one_replica_is_a_hit_on_the_other_and_revocation_crosses(replicas: Cluster, origin: Registry):
    (a, b), token, license_id = replicas
    digest, _ = origin.images["shared"].blobs[-1]
    path = f"/v2/vendor/shared/blobs/{digest}"
    async with aiohttp.ClientSession() as s:
        assert await _pull(s, _blob_url(a, "vendor/shared", digest), license_id) == (200, digest)
        assert _upstream_gets(origin, path) == 1
        # A's client had its bytes before A published them (the publish, then the index row,
        # then the lease let go): until then, B would only pass the bytes through. B never
        # fetched it; its HEAD finds A's object through the shared index once it is there.

        async def b_has_it() -> bool:
            async with s.head(_blob_url(b, "vendor/shared", digest), headers=_auth(license_id)) as r:
                assert r.status == 200
            return _metric(b, "pullgate_cache_adopted_total") == 1

        await apoll(b_has_it, 20, "A's object in the shared index, seen by B")
        assert await _pull(s, _blob_url(b, "vendor/shared", digest), license_id) == (200, digest)
        assert _upstream_gets(origin, path) == 1
        assert _metric(b, 'pullgate_cache_hits_total{kind="blob"}') >= 2  # the HEAD and the GET
        assert _metric(b, "pullgate_cache_fills_total") == 0

        # A revocation made through A's vendor API bites on B's hits.
        admin = a.admin_url + "/vendor/v3"
        async with s.get(f"{admin}/customers", headers={"Authorization": token}) as r:
            cid = (await r.json())["customers"][0]["id"]
        async with s.post(f"{admin}/customer/{cid}/revoke", headers={"Authorization": token}) as r:
            assert r.status == 200

        async def refused_on_b() -> bool:
            async with s.head(_blob_url(b, "vendor/shared", digest), headers=_auth(license_id)) as r:
                return r.status == 401

        await apoll(refused_on_b, 10, "the revocation made on A to bite on B")  # license_cache_seconds: 1
        async with s.get(_blob_url(b, "vendor/shared", digest), headers=_auth(license_id)) as r:
            assert r.status == 401 and "Location" not in r.headers


async def test_a_hundred_pulls_over_two_replicas_fill_once(
    replicas: Cluster, origin: Registry, s3gw: S3Gateway, s3_bucket: str
):
    (a, b), _, license_id = replicas
    digest, _ = origin.images["wide"].blobs[-1]
    timeout = aiohttp.ClientTimeout(total=240)
    connector = aiohttp.TCPConnector(limit=0)  # all at once, half on each replica
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
        urls = [_blob_url((a, b)[i % 2], "vendor/wide", digest) for i in range(100)]
        results = await asyncio.gather(*(_pull(s, u, license_id) for u in urls))
    assert results == [(200, digest)] * 100  # every client got the verified bytes
    gets = _upstream_gets(origin, f"/v2/vendor/wide/blobs/{digest}")
    assert 1 <= gets <= 2  # at most one per replica
    fills = {srv.name: _metric(srv, 'pullgate_cache_fills_total{role="fill"}') for srv in (a, b)}
    assert sorted(fills.values()) == [0, 1]  # one replica filled the bucket for both
    passes = sum(_metric(srv, 'pullgate_cache_fills_total{role="pass"}') for srv in (a, b))
    assert gets == 1 + passes
    # Stored once: one object, no upload left behind.
    hexpart = digest.split(":", 1)[1]
    await apoll(lambda: len(_bucket_keys(s3gw, s3_bucket)) == 1, 20, "the published object")
    assert _bucket_keys(s3gw, s3_bucket) == [f"blobs/sha256/{hexpart[:2]}/{hexpart}"]
    assert _pending_uploads(s3gw, s3_bucket) == 0


@pytest.mark.parametrize("replicas", [{"max_size": "12MiB", "shared_eviction_seconds": 1}], indirect=True)
async def test_max_size_bounds_what_the_replicas_hold_together(
    replicas: Cluster, origin: Registry, s3gw: S3Gateway, s3_bucket: str
):
    (a, b), _, license_id = replicas
    first, _ = origin.images["older"].blobs[-1]
    second, _ = origin.images["newer"].blobs[-1]

    def held() -> list[str]:
        return ["sha256:" + key.rsplit("/", 1)[-1] for key in _bucket_keys(s3gw, s3_bucket)]

    async with aiohttp.ClientSession() as s:
        # 8 MiB through A, then 8 MiB through B: each replica's own index stays within 12 MiB,
        # the bucket would hold 16.
        assert await _pull(s, _blob_url(a, "vendor/older", first), license_id) == (200, first)
        await apoll(lambda: held() == [first], 20, "A's object published")
        assert await _pull(s, _blob_url(b, "vendor/newer", second), license_id) == (200, second)
        # Within a round or two, one replica trims the shared cache: the older object goes.
        await apoll(lambda: held() == [second], 30, "the least recently used object evicted from the bucket")
        evicted = _metric(a, "pullgate_cache_evictions_total") + _metric(b, "pullgate_cache_evictions_total")
        assert evicted >= 1
        # Evicted is not lost: A still lists it, finds it gone, and fetches it again.
        assert await _pull(s, _blob_url(a, "vendor/older", first), license_id) == (200, first)
        assert _upstream_gets(origin, f"/v2/vendor/older/blobs/{first}") == 2


async def test_a_purge_on_one_replica_clears_what_the_other_fetched(
    replicas: Cluster, origin: Registry, s3gw: S3Gateway, s3_bucket: str
):
    (a, b), token, license_id = replicas
    digest, _ = origin.images["purged"].blobs[-1]
    path = f"/v2/vendor/purged/blobs/{digest}"
    async with aiohttp.ClientSession() as s:
        assert await _pull(s, _blob_url(b, "vendor/purged", digest), license_id) == (200, digest)
        await apoll(lambda: _metric(b, "pullgate_cache_entries") == 1, 20, "B's fill published")
        # Through A's vendor API; A never fetched it, so only the store knows B's binding.
        async with s.delete(
            f"{a.admin_url}/vendor/v3/cache/entries", params={"repo": "vendor/purged"}, headers={"Authorization": token}
        ) as r:
            assert r.status == 200, await r.text()
            purged = (await r.json())["purged"]
        assert (purged["bindings"], purged["deleted"]) == (1, 1)
        assert _bucket_keys(s3gw, s3_bucket) == []
        # B is told (PostgreSQL NOTIFY) and its index drops the object at once.
        await apoll(lambda: _metric(b, "pullgate_cache_entries") == 0, 10, "B's index resynced")
        gets = _upstream_gets(origin, path)
        assert await _pull(s, _blob_url(b, "vendor/purged", digest), license_id) == (200, digest)
        assert _upstream_gets(origin, path) == gets + 1  # fetched again, not served from a stale index
