"""A registry-shaped trap on loopback that records every request it receives.

It asks for Basic credentials (401 with a Basic challenge) and records the
Authorization header of every request, so a test can tell whether a stored
secret was ever sent to a destination its owner did not give it for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None


class CaptureServer:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                owner.seen.append(Seen(self.command, self.path, self.headers.get("Authorization")))
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"capture"}]}'
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="capture"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="capture", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def credentials(self) -> list[str]:
        return [s.authorization for s in self.seen if s.authorization]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> CaptureServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
