"""A hostile registry on loopback: it answers `/v2/` like a registry, then sends the
proxy wherever a test says (a redirect or a token realm), to prove the egress
policy holds. Optionally over TLS, for https -> http redirects."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler

from tests.support.procs import serve_loopback


class InwardRegistry:
    """Manifest and blob requests get `302 Location: <location>`; with `realm` set,
    every request without a Bearer token gets a 401 challenge naming that realm.
    `requests` counts what reached it; `leak` is what a plain-HTTP copy serves."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, leak: bytes = b"") -> None:
        self.location = ""
        self.realm = ""
        self.leak = leak
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                outer.requests.append(self.path)
                outer._handle(self)

            do_GET = do_HEAD = _any

        self.server = serve_loopback(Handler, ssl_context)
        self.scheme = "https" if ssl_context is not None else "http"
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        if self.realm and not req.headers.get("Authorization", "").startswith("Bearer "):
            challenge = f'Bearer realm="{self.realm}",service="hostile"'
            return _answer(req, 401, b"{}", {"WWW-Authenticate": challenge})
        if self.leak:
            return _answer(req, 200, self.leak, {"Content-Type": "application/octet-stream"})
        if "/manifests/" in req.path or "/blobs/" in req.path:
            return _answer(req, 302, b"", {"Location": self.location})
        return _answer(req, 200, b"{}", {"Content-Type": "application/json"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _answer(req: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    req.send_response(status)
    for k, v in headers.items():
        req.send_header(k, v)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


class TricklingRegistry:
    """A registry whose blobs never finish: 200 with a large Content-Length, then one
    byte every `interval` seconds until the reader goes away. Holds upstream connections."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.streams = 0
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if "/blobs/" not in self.path:
                    return _answer(self, 200, b"{}", {"Content-Type": "application/json"})
                outer.streams += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                try:
                    while not outer._stop.wait(outer.interval):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

            do_HEAD = do_GET

        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
