"""Hole 6: what is asked for by digest is verified. A hostile registry sends the
wrong bytes; the client sees a failure, never a clean 200 with those bytes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import skopeo
from tests.support.client import basic
from tests.support.hostile import (
    OCI_MANIFEST,
    Body,
    HostileRegistry,
    image,
    repeated,
    repeated_digest,
    sha256,
    sha512,
)
from tests.support.pullgate import Pullgate

LICENSE = "lic-digest-test-0123456789abcdef"
AUTH = {"Authorization": basic(LICENSE)}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    reg = HostileRegistry()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hostile: HostileRegistry) -> Iterator[Pullgate]:
    teams = [
        {
            "name": "dig",
            "apps": [{"slug": "dig"}],
            "registries": [
                {
                    "slug": "hostile",
                    "provider": "other",
                    "endpoint": "hostile.test",
                    "url": hostile.url,
                    "insecure": True,
                },
            ],
            "customers": [{"name": "C", "app": "dig", "license_id_env": "DIG_LICENSE"}],
        }
    ]
    settings = {"upstream": {"idle_timeout": 3}}  # also the bound on reading a whole manifest
    srv = Pullgate(tmp_path_factory.mktemp("digests"), teams, env={"DIG_LICENSE": LICENSE}, settings=settings).start()
    yield srv
    srv.stop()


def _url(server: Pullgate, repo: str, kind: str, ref: str) -> str:
    return f"{server.url}/v2/proxy/dig/hostile/{repo}/{kind}/{ref}"


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, str | None]:
    """(status, headers, body, failure): `failure` names the error when the body broke."""
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={**AUTH, **(headers or {})}) as r:
            try:
                body = await r.read()
            except aiohttp.ClientPayloadError as exc:
                return r.status, dict(r.headers), b"", type(exc).__name__
            return r.status, dict(r.headers), body, None


def _metric(server: Pullgate, name: str, **labels: str) -> float:
    import urllib.request

    with urllib.request.urlopen(server.admin_url + "/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_blob_with_the_wrong_bytes_is_never_a_clean_200(server: Pullgate, hostile: HostileRegistry, chunked):
    img = image(f"vendor/wrongblob{int(chunked)}", "v1", f"wrong{chunked}")
    good = img.layer
    bad = bytes(b ^ 0xFF for b in good[:100]) + good[100:]  # same length, other bytes
    hostile.serve_image(img)
    hostile.serve(f"/v2/{img.repo}/blobs/{img.layer_digest}", Body(bad, content_length=not chunked))
    before = _metric(server, "pullgate_digest_mismatch_total", registry="hostile", kind="blob")
    status, _, body, failure = await _get(_url(server, img.repo, "blobs", img.layer_digest))
    # The headers may already be out (200), but the body never ends cleanly.
    assert failure is not None, f"got a clean {status} with {len(body)} bytes that do not match the digest"
    assert _metric(server, "pullgate_digest_mismatch_total", registry="hostile", kind="blob") == before + 1
    assert server.wait_until(
        lambda: f"digest mismatch: registry hostile sent a blob that is not {img.layer_digest}" in server.log_text(),
        timeout=5,
    )
    # The right bytes pass, whole.
    hostile.serve(f"/v2/{img.repo}/blobs/{img.layer_digest}", Body(good, content_length=not chunked))
    status, _, body, failure = await _get(_url(server, img.repo, "blobs", img.layer_digest))
    assert (status, failure, body) == (200, None, good)
    # The pull log tells the two apart: the cut one did not succeed.
    assert server.wait_until(lambda: _pull_log_successes(server, img.repo) == [0, 1], timeout=10)


def _pull_log_successes(server: Pullgate, image: str) -> list[int]:
    with sqlite3.connect(server.db_path, timeout=10) as db:
        rows = db.execute("SELECT success FROM pull_logs WHERE image = ? AND action = 'blob' ORDER BY time", (image,))
        return [r[0] for r in rows]


async def test_sha512_blobs_are_verified_too(server: Pullgate, hostile: HostileRegistry):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    digest = sha512(data)
    path = f"/v2/vendor/sha512/blobs/{digest}"
    hostile.serve(path, Body(data))
    status, _, body, failure = await _get(_url(server, "vendor/sha512", "blobs", digest))
    assert (status, failure, body == data) == (200, None, True)
    hostile.serve(path, Body(data[:-1] + b"\0"))
    _, _, _, failure = await _get(_url(server, "vendor/sha512", "blobs", digest))
    assert failure is not None


async def test_a_big_wrong_blob_is_cut_before_its_end(server: Pullgate, hostile: HostileRegistry):
    size = 24 * 1024 * 1024 + 5
    block = os.urandom(1024 * 1024)
    digest = repeated_digest(block, size)
    path = f"/v2/vendor/bigwrong/blobs/{digest}"
    hostile.serve(path, Body(stream=repeated(block[:-1] + b"x", size), length=size))
    got = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(_url(server, "vendor/bigwrong", "blobs", digest), headers=AUTH) as r:
            assert r.status == 200 and r.content_length == size
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_chunked(1 << 20):
                    got += len(chunk)
    assert got < size


async def test_skopeo_fails_on_a_wrong_layer(server: Pullgate, hostile: HostileRegistry, tmp_path: Path):
    img = image("vendor/skopeo-wrong", "v1", "skopeo")
    hostile.serve_image(img, layer=img.layer[:-10] + b"0123456789")
    ref = f"docker://{server.host}/proxy/dig/hostile/{img.repo}:{img.tag}"
    res = await asyncio.to_thread(skopeo.copy, ref, tmp_path / "out", creds=f"x:{LICENSE}")
    assert res.returncode != 0
    # and with the true layer, it copies.
    hostile.serve_image(img)
    res = await asyncio.to_thread(skopeo.copy, ref, tmp_path / "ok", creds=f"x:{LICENSE}")
    assert res.returncode == 0, res.stderr


async def test_a_range_of_a_blob_is_relayed_unverified(server: Pullgate, hostile: HostileRegistry):
    data = b"0123456789" * 100
    digest = sha256(data)
    hostile.serve(
        f"/v2/vendor/ranged/blobs/{digest}",
        Body(data[10:20], status=206, headers={"Content-Range": f"bytes 10-19/{len(data)}"}),
    )
    status, headers, body, failure = await _get(
        _url(server, "vendor/ranged", "blobs", digest), {"Range": "bytes=10-19"}
    )
    assert (status, body, failure) == (206, data[10:20], None)
    assert headers["Content-Range"] == f"bytes 10-19/{len(data)}"


async def test_a_manifest_with_the_wrong_bytes_is_a_502(server: Pullgate, hostile: HostileRegistry):
    img = image("vendor/wrongmanifest", "v1", "wm")
    other = image("vendor/wrongmanifest", "v2", "other")
    hostile.serve_image(img)
    hostile.serve(f"/v2/{img.repo}/manifests/{img.digest}", Body(other.manifest, {"Content-Type": OCI_MANIFEST}))
    before = _metric(server, "pullgate_digest_mismatch_total", registry="hostile", kind="manifest")
    status, _, body, _ = await _get(_url(server, img.repo, "manifests", img.digest), {"Accept": OCI_MANIFEST})
    assert status == 502
    err = json.loads(body)["errors"][0]
    assert err["code"] == "UPSTREAM_ERROR" and "do not match the requested digest" in err["message"]
    assert "hostile" in err["message"]
    assert _metric(server, "pullgate_digest_mismatch_total", registry="hostile", kind="manifest") == before + 1


async def test_a_tag_whose_announced_digest_lies_is_a_502(server: Pullgate, hostile: HostileRegistry):
    img = image("vendor/lyingtag", "v1", "lt")
    other = image("vendor/lyingtag", "v2", "lt2")
    hostile.serve(
        f"/v2/{img.repo}/manifests/v1",
        Body(img.manifest, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": other.digest}),
    )
    status, _, body, _ = await _get(_url(server, img.repo, "manifests", "v1"), {"Accept": OCI_MANIFEST})
    assert status == 502
    assert "Docker-Content-Digest" in json.loads(body)["errors"][0]["message"]


async def test_a_manifest_by_tag_gets_its_digest_and_exact_length(server: Pullgate, hostile: HostileRegistry):
    img = image("vendor/plaintag", "v1", "pt")
    hostile.serve_image(img, manifest_headers=False)  # no Docker-Content-Digest upstream
    hostile.serve(
        f"/v2/{img.repo}/manifests/chunked", Body(img.manifest, {"Content-Type": OCI_MANIFEST}, content_length=False)
    )
    for tag in ("v1", "chunked"):
        status, headers, body, failure = await _get(_url(server, img.repo, "manifests", tag), {"Accept": OCI_MANIFEST})
        assert (status, failure, body) == (200, None, img.manifest)
        assert headers["Docker-Content-Digest"] == img.digest
        assert headers["Content-Length"] == str(len(img.manifest))
        assert headers["Content-Type"] == OCI_MANIFEST


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_an_oversize_manifest_is_refused(server: Pullgate, hostile: HostileRegistry, with_length: bool):
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    repo = f"vendor/oversize{int(with_length)}"
    hostile.serve(f"/v2/{repo}/manifests/v1", Body(big, {"Content-Type": OCI_MANIFEST}, content_length=with_length))
    hostile.serve(f"/v2/{repo}/manifests/{sha256(big)}", Body(big, {"Content-Type": OCI_MANIFEST}))
    for ref in ("v1", sha256(big)):
        status, _, body, _ = await _get(_url(server, repo, "manifests", ref), {"Accept": OCI_MANIFEST})
        assert status == 502
        err = json.loads(body)["errors"][0]
        assert err["code"] == "UPSTREAM_ERROR" and "too large" in err["message"]


async def test_head_is_relayed_unverified(server: Pullgate, hostile: HostileRegistry):
    img = image("vendor/headonly", "v1", "ho")
    hostile.serve_image(img)
    async with aiohttp.ClientSession() as s:
        async with s.head(_url(server, img.repo, "manifests", "v1"), headers={**AUTH, "Accept": OCI_MANIFEST}) as r:
            assert r.status == 200 and r.headers["Docker-Content-Digest"] == img.digest
            assert r.content_length == len(img.manifest)


async def test_a_trickled_manifest_is_cut_off(server: Pullgate, hostile: HostileRegistry):
    # 10 bytes every half second: never idle long enough for the socket timeout, yet never done.
    hostile.serve("/v2/vendor/trickle/manifests/v1", Body(stream=repeated(b"x" * 10, 400, pause=0.5), length=400))
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, _, body, _ = await _get(_url(server, "vendor/trickle", "manifests", "v1"), {"Accept": OCI_MANIFEST})
    assert status == 504 and json.loads(body)["errors"][0]["code"] == "UPSTREAM_TIMEOUT"
    assert loop.time() - start < 10


@pytest.mark.parametrize("kind", ["blobs", "manifests"])
async def test_a_206_nobody_asked_for_is_not_a_way_around_the_digest(
    server: Pullgate, hostile: HostileRegistry, kind: str
):
    """A registry answering 206 to a request without Range had its bytes relayed unhashed, as a clean 206."""
    img = image(f"vendor/partial-{kind}", "v1", f"partial-{kind}")
    other = image(f"vendor/partial-{kind}", "v2", f"other-{kind}")
    hostile.serve_image(img)
    wrong = other.layer if kind == "blobs" else other.manifest
    ref = img.layer_digest if kind == "blobs" else img.digest
    headers = {"Content-Type": OCI_MANIFEST, "Content-Range": f"bytes 0-{len(wrong) - 1}/{len(wrong)}"}
    hostile.serve(f"/v2/{img.repo}/{kind}/{ref}", Body(wrong, headers, status=206))
    status, _, body, failure = await _get(_url(server, img.repo, kind, ref), {"Accept": OCI_MANIFEST})
    assert failure is None and status == 502, f"{kind}: {status} with {len(body)} bytes that are not {ref}"
    err = json.loads(body)["errors"][0]
    assert err["code"] == "UPSTREAM_ERROR" and "'hostile' sent a part, not the whole" in err["message"]


async def test_a_tag_list_in_many_pieces_is_read_whole(server: Pullgate, hostile: HostileRegistry):
    """Not a digest matter, but found with this registry: a tag list arriving in pieces was cut at
    the first piece (read(n) returns what has arrived) and answered 502 'not JSON'."""
    tags = [f"v{i}" for i in range(20000)]
    body = json.dumps({"name": "vendor/manytags", "tags": tags}).encode()

    async def pieces():
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]
            await asyncio.sleep(0)

    hostile.serve("/v2/vendor/manytags/tags/list", Body(stream=pieces, length=len(body)))
    status, _, got, failure = await _get(_url(server, "vendor/manytags", "tags", "list"))
    assert (status, failure) == (200, None), got[:200]
    assert json.loads(got)["tags"] == tags


async def test_a_trickled_tag_list_is_cut_off(server: Pullgate, hostile: HostileRegistry):
    hostile.serve("/v2/vendor/trickletags/tags/list", Body(stream=repeated(b"x" * 10, 400, pause=0.5), length=400))
    start = asyncio.get_running_loop().time()
    status, _, body, _ = await _get(_url(server, "vendor/trickletags", "tags", "list"))
    assert status == 504 and json.loads(body)["errors"][0]["code"] == "UPSTREAM_TIMEOUT"
    assert asyncio.get_running_loop().time() - start < 10
