"""The pull API's surface: headers, ranges, tags, referrers, writes, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket

import pytest

from tests.support.client import ProxyClient, basic
from tests.support.deployment import Deployment

BASE = "/v2/proxy/acme/vendor-basic/vendor"
OCI = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def client(deployment: Deployment) -> ProxyClient:
    return ProxyClient(deployment)


@pytest.fixture
def auth(deployment: Deployment) -> dict[str, str]:
    return {"Authorization": basic(deployment.licenses["valid"])}


async def test_manifest_head_and_get(client: ProxyClient, deployment: Deployment, auth: dict[str, str]):
    img = deployment.upstreams["vendor-basic"].images["oci"]
    head = await client.request("HEAD", f"{BASE}/oci/manifests/v1", headers={**auth, "Accept": OCI})
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(img.manifest))
    assert head.headers["Docker-Content-Digest"] == img.digest
    assert head.headers["Content-Type"] == OCI
    got = await client.request("GET", f"{BASE}/oci/manifests/{img.digest}", headers={**auth, "Accept": OCI})
    assert got.status == 200 and got.body == img.manifest
    assert got.headers["Docker-Content-Digest"] == img.digest
    assert got.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert got.headers["X-Request-Id"]


async def test_manifest_unknown(client: ProxyClient, auth: dict[str, str]):
    ans = await client.request("GET", f"{BASE}/oci/manifests/nope", headers={**auth, "Accept": OCI})
    assert (ans.status, ans.error_code) == (404, "MANIFEST_UNKNOWN")
    ans = await client.request("HEAD", f"{BASE}/oci/manifests/nope", headers={**auth, "Accept": OCI})
    assert ans.status == 404 and ans.body == b""
    missing = "sha256:" + "0" * 64
    ans = await client.request("GET", f"{BASE}/oci/blobs/{missing}", headers=auth)
    assert (ans.status, ans.error_code) == (404, "BLOB_UNKNOWN")


async def test_blob_full_and_ranges(client: ProxyClient, deployment: Deployment, auth: dict[str, str]):
    img = deployment.upstreams["vendor-basic"].images["oci"]
    digest, size = img.blobs[-1]
    full = await client.request("GET", f"{BASE}/oci/blobs/{digest}", headers=auth)
    assert full.status == 200 and len(full.body) == size
    assert "sha256:" + hashlib.sha256(full.body).hexdigest() == digest
    part = await client.request("GET", f"{BASE}/oci/blobs/{digest}", headers={**auth, "Range": "bytes=10-1033"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 10-1033/{size}"
    assert part.body == full.body[10:1034]
    tail = await client.request("GET", f"{BASE}/oci/blobs/{digest}", headers={**auth, "Range": "bytes=-100"})
    assert tail.status == 206 and tail.body == full.body[-100:]
    beyond = await client.request("GET", f"{BASE}/oci/blobs/{digest}", headers={**auth, "Range": f"bytes={size + 10}-"})
    assert beyond.status == 416
    for bad in ("bytes=5-2,7-9", "items=0-1", "bytes=abc"):
        ans = await client.request("GET", f"{BASE}/oci/blobs/{digest}", headers={**auth, "Range": bad})
        assert ans.status == 416, bad
        assert ans.error_code == "RANGE_INVALID"


async def test_tags_list_paginates(client: ProxyClient, deployment: Deployment, auth: dict[str, str]):
    img = deployment.upstreams["vendor-basic"].images["oci"]
    everything = await client.request("GET", f"{BASE}/oci/tags/list", headers=auth)
    assert everything.status == 200
    body = everything.json()
    assert body["name"] == "proxy/acme/vendor-basic/vendor/oci"
    assert sorted(body["tags"]) == sorted(img.tags)
    first = await client.request("GET", f"{BASE}/oci/tags/list?n=2", headers=auth)
    assert first.json()["tags"] == sorted(img.tags)[:2]
    link = first.headers["Link"]
    assert link.startswith(f"<{BASE}/oci/tags/list?") and 'rel="next"' in link
    nxt = link[1 : link.index(">")]
    second = await client.request("GET", nxt, headers=auth)
    assert second.json()["tags"] == sorted(img.tags)[2:4]
    last = await client.request("GET", f"{BASE}/oci/tags/list?n=50&last={sorted(img.tags)[-2]}", headers=auth)
    assert last.json()["tags"] == sorted(img.tags)[-1:]
    assert "Link" not in last.headers
    bad = await client.request("GET", f"{BASE}/oci/tags/list?n=-1", headers=auth)
    assert (bad.status, bad.error_code) == (400, "PAGINATION_NUMBER_INVALID")


async def test_referrers_pass_through_with_query(client: ProxyClient, deployment: Deployment, auth: dict[str, str]):
    img = deployment.upstreams["vendor-anon"].images["oci"]
    path = f"/v2/proxy/acme/vendor-breaking/{img.repo}/referrers/{img.digest}?artifactType=application%2Fx.sig"
    ans = await client.request("GET", path, headers=auth)
    # docker-registry 2.8 has no referrers API: its plain-text 404 comes back as an OCI error
    # that is not NAME_UNKNOWN, so clients fall back to the referrers tag schema.
    assert (ans.status, ans.error_code) == (404, "UNSUPPORTED")
    assert f"/v2/{img.repo}/referrers/{img.digest}?artifactType=application%2Fx.sig" in deployment.front.paths


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
async def test_writes_are_unsupported(client: ProxyClient, auth: dict[str, str], method: str):
    for path in (f"{BASE}/oci/manifests/v1", f"{BASE}/oci/blobs/uploads/", "/v2/"):
        ans = await client.request(method, path, headers=auth, data=b"x")
        assert (ans.status, ans.error_code) == (405, "UNSUPPORTED"), path


async def test_unconfigured_upstreams_are_404_without_any_connection(
    client: ProxyClient, deployment: Deployment, auth: dict[str, str]
):
    before = deployment.sentinel.connections
    for path in (
        "/v2/proxy/acme/other-only/vendor/oci/manifests/v1",  # a registry of another app
        "/v2/proxy/acme/registry.other.test/vendor/oci/manifests/v1",  # same, by endpoint
        "/v2/proxy/acme/globex-reg/vendor/oci/manifests/v1",  # another team's registry
        "/v2/proxy/acme/registry.globex.test/vendor/oci/manifests/v1",
        "/v2/proxy/acme/127.0.0.1/vendor/oci/manifests/v1",
        "/v2/proxy/acme/quay.io/vendor/oci/manifests/v1",  # not configured at all
        "/v2/proxy/acme/library/redis/manifests/7",  # Docker Hub, not configured
        "/v2/proxy/acme/vendor-basic/manifests/v1",  # no repository after the registry
    ):
        ans = await client.request("GET", path, headers=auth)
        assert (ans.status, ans.error_code) == (404, "NAME_UNKNOWN"), path
    # Each was answered before any upstream I/O: nothing can still be on its way to the sentinel.
    assert deployment.sentinel.connections == before


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/proxy/acme/vendor-basic/Vendor/oci/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/manifests/-bad", 404, "MANIFEST_UNKNOWN"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/manifests/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),  # upper hex
        ("/v2/proxy/acme/vendor-basic/vendor/oci/manifests/sha384:" + "0" * 96, 400, "DIGEST_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/blobs/sha512:" + "0" * 64, 400, "DIGEST_INVALID"),  # short
        ("/v2/proxy/acme/vendor-basic/vendor/oci/blobs/v1", 400, "DIGEST_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/%2e%2e/oci/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/%252e%252e/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor/%ff/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/proxy/acme/vendor-basic/vendor//oci/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/proxy/nope/vendor-basic/vendor/oci/manifests/v1", 403, "DENIED"),
        ("/v2/other/vendor/oci/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v2/proxy/acme/vendor-basic/vendor/oci/whatever", 404, "NAME_UNKNOWN"),
        ("/metrics", 404, "NAME_UNKNOWN"),
        ("/vendor/v3/apps", 404, "NAME_UNKNOWN"),
        ("/v2/proxy/acme/vendor-basic/" + "a/" * 200 + "manifests/v1", 400, "NAME_INVALID"),
    ],
)
async def test_bad_input_gets_oci_errors(client: ProxyClient, auth: dict[str, str], path: str, status: int, code: str):
    ans = await client.request("GET", path, headers=auth)
    assert (ans.status, ans.error_code) == (status, code), ans.body
    assert b"Traceback" not in ans.body


def _raw(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


async def test_protocol_abuse_keeps_the_server_serving(client: ProxyClient, deployment: Deployment):
    host, port = "127.0.0.1", deployment.server.port
    log_before = len(deployment.server.log_text())
    huge = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    answer = await asyncio.to_thread(_raw, host, port, huge)
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431", b"HTTP/1.0 400")), answer[:80]
    for junk in (
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /v2/\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: a b c\r\n\r\n",
    ):
        answer = await asyncio.to_thread(_raw, host, port, junk)
        assert answer.startswith(b"HTTP/1."), answer[:80]
        assert b" 500 " not in answer.split(b"\r\n", 1)[0]
    smuggle = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert (await asyncio.to_thread(_raw, host, port, smuggle)).startswith(b"HTTP/1.0 400")
    assert (await client.request("GET", "/v2/")).status == 401
    # A malformed request is the client's error: logged (as the 400 it got), never at error level.
    lines = [json.loads(x) for x in deployment.server.log_text()[log_before:].splitlines() if x.startswith("{")]
    assert [x for x in lines if x["level"] in ("error", "critical")] == []
    assert [x["status"] for x in lines if x["msg"] == "access" and x["method"] == "UNKNOWN"].count(400) >= 4


async def test_unreachable_upstream_is_a_502_naming_the_registry(client: ProxyClient, auth: dict[str, str]):
    ans = await client.request("GET", "/v2/proxy/acme/vendor-down/vendor/oci/manifests/v1", headers=auth)
    assert (ans.status, ans.error_code) == (502, "UPSTREAM_ERROR")
    assert "vendor-down" in ans.json()["errors"][0]["message"]
    ans = await client.request("HEAD", "/v2/proxy/acme/vendor-down/vendor/oci/manifests/v1", headers=auth)
    assert ans.status == 502 and ans.body == b""
