"""A webhook receiver on loopback, as a vendor would run one: it checks each POST's
`X-Pullgate-Signature` against the shared secret and records what came.

`fail_first` makes it answer 503 to that many requests before accepting (a receiver
that is briefly down), so a test can see the retries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.procs import serve_loopback


@dataclass(frozen=True)
class Received:
    body: bytes
    signature: str | None
    valid: bool  # the signature is the HMAC of the body under the receiver's secret
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class WebhookReceiver:
    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.received: list[Received] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sig = self.headers.get("X-Pullgate-Signature")
                want = "sha256=" + hmac.new(owner.secret.encode(), body, hashlib.sha256).hexdigest()
                with owner._lock:
                    status = 503 if len(owner.received) < owner.fail_first else 204
                    owner.received.append(
                        Received(body, sig, sig is not None and hmac.compare_digest(sig, want), status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/pullgate"

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.status < 300]

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
