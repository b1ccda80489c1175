"""Streams: a broken upstream fails the client; a leaving client frees the upstream."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp

from tests.support import skopeo
from tests.support.client import basic
from tests.support.deployment import Deployment
from tests.support.images import oci_image


def _stream_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(("pullgate_streams_in_flight ", "pullgate_streams_aborted_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _metrics(dep: Deployment) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(dep.server.admin_url + "/metrics") as r:
        return _stream_metrics(await r.text())


async def test_upstream_breaking_mid_blob_fails_the_client(deployment: Deployment, workdir):
    img = deployment.upstreams["vendor-anon"].images["big"]
    broken_before = deployment.front.broken
    ref = f"docker://{deployment.host}/proxy/acme/vendor-breaking/{img.repo}:{img.tag}"
    res = await asyncio.to_thread(skopeo.copy, ref, workdir / "out", creds=f"x:{deployment.licenses['valid']}")
    assert res.returncode != 0, "skopeo must fail when the upstream breaks mid-blob"
    assert deployment.front.broken > broken_before
    # A raw client sees the short body as an error too, never as a clean end.
    digest, size = img.blobs[-1]
    url = f"{deployment.url}/v2/proxy/acme/vendor-breaking/{img.repo}/blobs/{digest}"
    got = 0
    failed = False
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(url, headers={"Authorization": basic(deployment.licenses["valid"])}) as r:
                assert r.status == 200
                assert r.content_length == size
                async for chunk in r.content.iter_chunked(1 << 20):
                    got += len(chunk)
        except aiohttp.ClientPayloadError:
            failed = True
    assert failed and got < size
    # Nothing left behind: no stream in flight, no connection to the broken upstream.
    front_port = deployment.front.port
    assert deployment.server.wait_until(lambda: front_port not in [p for _, p in deployment.server.tcp_peers()])
    assert (await _metrics(deployment))["pullgate_streams_in_flight"] == 0


async def test_client_leaving_releases_the_upstream(deployment: Deployment):
    img = deployment.upstreams["vendor-anon"].images["big"]
    digest, _size = img.blobs[-1]
    url = f"{deployment.url}/v2/proxy/acme/vendor-breaking/{img.repo}/blobs/{digest}"
    # Only the first 5% is fine: the front breaks this blob at 50%, and we leave long before.
    reader, writer = await asyncio.open_connection("127.0.0.1", deployment.server.port)
    writer.write(
        f"GET {url.split(deployment.host, 1)[1]} HTTP/1.1\r\nHost: {deployment.host}\r\n"
        f"Authorization: {basic(deployment.licenses['valid'])}\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(1 << 20)
    assert deployment.front.streaming >= 1
    writer.transport.abort()
    # The proxy notices on its next write and drops the upstream connection at once.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while deployment.front.streaming and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert deployment.front.streaming == 0
    in_flight = "pullgate_streams_in_flight"
    assert deployment.server.wait_until(lambda: _metrics_sync(deployment).get(in_flight) == 0)
    # and it keeps serving.
    async with aiohttp.ClientSession() as s:
        async with s.head(url, headers={"Authorization": basic(deployment.licenses["valid"])}) as r:
            assert r.status == 200


def _metrics_sync(dep: Deployment) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(dep.server.admin_url + "/metrics", timeout=5) as r:  # noqa: S310 - loopback
        return _stream_metrics(r.read().decode())


async def test_concurrent_first_requests_share_one_upstream_token(deployment: Deployment):
    upstream = deployment.upstreams["vendor-token"]
    repo = f"economy/r{hashlib.sha256(deployment.url.encode()).hexdigest()[:8]}"
    img = await asyncio.to_thread(oci_image, upstream, repo, "v1")
    scope = f"repository:{repo}:pull"
    ts = upstream.token_server
    assert ts is not None
    before = sum(1 for f in ts.fetches if f.scope == scope and f.user == "vendor")
    url = f"{deployment.url}/v2/proxy/acme/vendor-token/{repo}/manifests/v1"
    headers = {"Authorization": basic(deployment.licenses["valid"]), "Accept": img.media_type}
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.head(url, headers=headers) as r:
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(30)))
        assert statuses == [200] * 30
        statuses = await asyncio.gather(*(one() for _ in range(100)))
        assert statuses == [200] * 100
    fetched = sum(1 for f in ts.fetches if f.scope == scope and f.user == "vendor") - before
    # The pusher fetched its own push token; the proxy's pulls share one fetch.
    assert fetched == 1, [f for f in ts.fetches if f.scope == scope]
