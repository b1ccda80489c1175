"""Peers that are slow on purpose, for the fault tests: a server that accepts and never
answers (a hanging token realm), and a registry that trickles one byte a second.

Both run in a thread on 127.0.0.1, hold every socket they accept until stop(), and
stop by themselves when the test ends (daemon threads, bounded waits).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.support.procs import serve_loopback


class HangingServer:
    """Accepts connections, reads what is sent, never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hanging-server", daemon=True)
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
            conn.setblocking(False)
            self.accepted += 1
            self._conns.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self._conns:
            c.close()
        self.sock.close()


class ChallengingRegistry:
    """Answers every /v2/ request 401 with a Bearer challenge whose realm is `realm`."""

    def __init__(self, realm: str) -> None:
        challenge = f'Bearer realm="{realm}",service="slow-test"'

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                self.send_response(401)
                self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TrickleRegistry:
    """A registry without auth whose blobs come one byte a second.

    `/v2/<repo>/blobs/<digest of BODY>`: status line and headers at once, then the body
    one byte a second (a whole, correct body after len(BODY) seconds).
    `/v2/stall/...`: the same, but after `stall_after` bytes it stops sending (the
    connection stays open). `/v2/headers/...`: the status line itself trickles, one byte
    a second, and never ends. Everything is bounded by `max_seconds`.
    """

    BODY = b"trickle!"
    DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()

    def __init__(self, stall_after: int = 3, max_seconds: float = 60) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _drip(self, data: bytes) -> bool:
                for i in range(len(data)):
                    if owner._stop.wait(1.0):
                        return False
                    try:
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return False
                return True

            def do_GET(self) -> None:
                owner.requests += 1
                self.close_connection = True
                if self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if self.path.startswith("/v2/headers/"):
                    self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + b"X" * 600)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(owner.BODY)))
                self.send_header("Docker-Content-Digest", owner.DIGEST)
                self.end_headers()
                self.wfile.flush()
                if self.path.startswith("/v2/stall/"):
                    self._drip(owner.BODY[:stall_after])
                    owner._stop.wait(max_seconds)  # holds the connection, sends nothing
                    return
                self._drip(owner.BODY)

        self.requests = 0
        self._stop = threading.Event()
        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]
        self._deadline = time.monotonic() + max_seconds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
