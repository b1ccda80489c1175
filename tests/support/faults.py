"""Misbehaving peers on loopback: a socket that must never be dialled, and a
front for a real registry that breaks one blob halfway through."""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.support.procs import serve_loopback

CHUNK = 256 * 1024


class Sentinel:
    """A listening socket standing in for a host the proxy must not contact."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class BreakingFront:
    """Relays to `upstream`, but cuts the body of blob `break_digest` after `fraction`."""

    def __init__(self, upstream: str, break_digest: str, fraction: float = 0.5) -> None:
        target = urlsplit(upstream)
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                front.paths.append(self.path)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.end_headers()
                total = int(resp.getheader("Content-Length") or 0)
                breaking = self.command == "GET" and self.path.endswith(f"/blobs/{break_digest}")
                limit = int(total * fraction) if breaking else None
                sent = 0
                front.streaming += 1
                try:
                    while self.command != "HEAD":
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        if limit is not None and sent + len(chunk) >= limit:
                            self.wfile.write(chunk[: limit - sent])
                            self.wfile.flush()
                            front.broken += 1
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:
                    self.close_connection = True  # the proxy hung up on us
                finally:
                    front.streaming -= 1
                    conn.close()

            do_GET = do_HEAD = _relay

        self.broken = 0
        self.streaming = 0  # bodies being written right now
        self.paths: list[str] = []
        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
