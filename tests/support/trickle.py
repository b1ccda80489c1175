"""A tiny registry on loopback whose one slow blob trickles until released.

`SLOW_DIGEST` is sent 1 KiB every `interval` seconds until `release()` (or
`max_seconds`, so a forgotten stream still ends), then the rest at once;
`FAST_DIGEST` and the manifest are answered at once. Both blobs' bytes match
their digests. `streaming` counts slow bodies being written right now.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.support.procs import serve_loopback

SLOW_BLOB = bytes(range(256)) * 256  # 64 KiB
FAST_BLOB = b"fast blob " * 100
SLOW_DIGEST = "sha256:" + hashlib.sha256(SLOW_BLOB).hexdigest()
FAST_DIGEST = "sha256:" + hashlib.sha256(FAST_BLOB).hexdigest()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": FAST_DIGEST,
            "size": len(FAST_BLOB),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": SLOW_DIGEST, "size": len(SLOW_BLOB)}
        ],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
STEP = 1024


class TrickleRegistry:
    def __init__(self, interval: float = 0.1, max_seconds: float = 30.0) -> None:
        reg = self
        self.interval = interval
        self.max_seconds = max_seconds
        self.streaming = 0
        self.gets = 0
        self._released = threading.Event()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/v2/":
                    return self._send(200, b"{}", "application/json")
                if "/manifests/" in path:
                    return self._send(200, MANIFEST, "application/vnd.oci.image.manifest.v1+json", MANIFEST_DIGEST)
                if path.endswith("/blobs/" + FAST_DIGEST):
                    return self._send(200, FAST_BLOB, "application/octet-stream", FAST_DIGEST)
                if path.endswith("/blobs/" + SLOW_DIGEST):
                    return self._trickle()
                return self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str, digest: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _trickle(self) -> None:
                if self.command == "HEAD":
                    return self._send(200, SLOW_BLOB, "application/octet-stream", SLOW_DIGEST)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(SLOW_BLOB)))
                self.send_header("Docker-Content-Digest", SLOW_DIGEST)
                self.end_headers()
                with reg._lock:
                    reg.streaming += 1
                    reg.gets += 1
                deadline = time.monotonic() + reg.max_seconds
                sent = 0
                try:
                    while sent < len(SLOW_BLOB):
                        slow = not reg._released.is_set() and time.monotonic() < deadline
                        step = STEP if slow else len(SLOW_BLOB) - sent
                        self.wfile.write(SLOW_BLOB[sent : sent + step])
                        self.wfile.flush()
                        sent += step
                        if slow:
                            reg._released.wait(reg.interval)
                except OSError:
                    self.close_connection = True  # the proxy hung up
                finally:
                    with reg._lock:
                        reg.streaming -= 1

            do_GET = do_HEAD = _answer

        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        """Slow bodies finish now, and later ones are sent at once."""
        self._released.set()

    def hold(self) -> None:
        """Slow bodies trickle again."""
        self._released.clear()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
