"""A hostile registry on loopback: it answers content-addressed requests with the
wrong bytes, oversize manifests, slow bodies; and records every request it got.

Each image it holds is a real one (a small tar layer, a config, an OCI manifest);
what it sends for a path is chosen by the test through `serve_*`, so one server
plays every misbehaviour. It runs its own event loop in a thread, so both sync
and async tests can use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def tar_layer(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


@dataclass
class HostileImage:
    repo: str
    tag: str
    manifest: bytes
    config: bytes
    layer: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def layer_digest(self) -> str:
        return sha256(self.layer)


@dataclass
class Body:
    """What one path answers: bytes (or a stream), headers, pacing."""

    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    content_length: bool = True  # False: chunked, no Content-Length
    # A generator of chunks instead of `data` (for big or slow bodies).
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    length: int | None = None  # the Content-Length of a stream, when known
    delay: float = 0.0  # seconds before the answer's headers


def image(repo: str, tag: str, seed: str) -> HostileImage:
    layer = tar_layer(f"{seed}.txt", f"layer of {seed}\n".encode() * 50)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }
    ).encode()
    return HostileImage(repo, tag, manifest, config, layer)


class HostileRegistry:
    """Serves `answers[path]`; anything else is a 404 MANIFEST_UNKNOWN/BLOB_UNKNOWN."""

    def __init__(self) -> None:
        self.answers: dict[str, Body] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.bodies_started = 0
        self.bodies_finished = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_for(self, fragment: str) -> list[tuple[str, str]]:
        return [r for r in self.requests if fragment in r[1]]

    # --- what to serve ---------------------------------------------------------
    def serve_image(self, img: HostileImage, *, layer: bytes | None = None, manifest_headers: bool = True) -> None:
        """A whole image; `layer` replaces the layer's bytes (a lie about its digest)."""
        headers = {"Content-Type": OCI_MANIFEST}
        if manifest_headers:
            headers["Docker-Content-Digest"] = img.digest
        for ref in (img.tag, img.digest):
            self.answers[f"/v2/{img.repo}/manifests/{ref}"] = Body(img.manifest, dict(headers))
        self.answers[f"/v2/{img.repo}/blobs/{sha256(img.config)}"] = Body(img.config)
        self.answers[f"/v2/{img.repo}/blobs/{img.layer_digest}"] = Body(img.layer if layer is None else layer)

    def serve(self, path: str, body: Body) -> None:
        self.answers[path] = body

    # --- the server ------------------------------------------------------------
    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path in ("/v2/", "/v2"):
            return web.json_response({})
        body = self.answers.get(request.path)
        if body is None:
            code = "BLOB_UNKNOWN" if "/blobs/" in request.path else "MANIFEST_UNKNOWN"
            return web.json_response({"errors": [{"code": code, "message": "unknown"}]}, status=404)
        if body.delay:
            await asyncio.sleep(body.delay)
        headers = {"Content-Type": "application/octet-stream", **body.headers}
        resp = web.StreamResponse(status=body.status, headers=headers)
        length = len(body.data) if body.stream is None else body.length
        if body.content_length and length is not None:
            resp.content_length = length
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        self.bodies_started += 1
        try:
            if body.stream is None:
                await resp.write(body.data)
            else:
                async for chunk in body.stream():
                    await resp.write(chunk)
            await resp.write_eof()
        except ConnectionError:
            return resp  # the proxy hung up
        self.bodies_finished += 1
        return resp

    def stop(self) -> None:
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def repeated(block: bytes, size: int, pause: float = 0.0) -> Callable[[], AsyncIterator[bytes]]:
    """A body of `size` bytes made of `block` again and again, with `pause` between blocks."""

    async def gen() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            chunk = block[: min(left, len(block))]
            left -= len(chunk)
            yield chunk
            if pause:
                await asyncio.sleep(pause)

    return gen


def repeated_digest(block: bytes, size: int) -> str:
    h = hashlib.sha256()
    left = size
    while left > 0:
        chunk = block[: min(left, len(block))]
        h.update(chunk)
        left -= len(chunk)
    return "sha256:" + h.hexdigest()
