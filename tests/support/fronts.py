"""Loopback stand-ins for provider quirks, in front of real registries:
blob redirects to a credential-refusing "CDN" (GHCR, Docker Hub, ECR's S3),
relative Locations (Artifact Registry), and the ECR API (moto) with a short
token expiry and a count of calls."""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.support.procs import serve_loopback

CHUNK = 256 * 1024
_BLOB_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})$")


class _Server:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose handler calls self.handle(req)."""

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                outer.handle(self)

            do_GET = do_HEAD = do_POST = _any

        self.server = serve_loopback(Handler)
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, req: BaseHTTPRequestHandler) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def relay(
    req: BaseHTTPRequestHandler,
    upstream: str,
    path: str,
    headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
) -> None:
    """Forward req to upstream (same method and path unless given) and stream the answer back."""
    target = urlsplit(upstream)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    length = int(req.headers.get("Content-Length") or 0)
    body = req.rfile.read(length) if length else None
    send = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "connection", "authorization")}
    send.update(headers or {})
    conn.request(req.command, path, body=body, headers=send)
    resp = conn.getresponse()
    req.send_response(resp.status)
    for k, v in resp.getheaders():
        if k.lower() not in ("connection", "transfer-encoding"):
            req.send_header(k, v)
    for k, v in (response_headers or {}).items():
        req.send_header(k, v)
    req.end_headers()
    while req.command != "HEAD":
        chunk = resp.read(CHUNK)
        if not chunk:
            break
        req.wfile.write(chunk)
    conn.close()


def _answer(req: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    req.send_response(status)
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


class CDN(_Server):
    """Serves blobs of an anonymous registry at /cdn/<repo>/<digest>; refuses any
    request that carries credentials, as S3 and the package CDNs do."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.served = 0
        self.with_credentials = 0
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        if req.headers.get("Authorization"):
            self.with_credentials += 1
            _answer(req, 400, b"<Error><Code>InvalidArgument</Code>Only one auth mechanism allowed</Error>")
            return
        repo, _, digest = urlsplit(req.path).path.removeprefix("/cdn/").rpartition("/")
        self.served += 1
        relay(req, self.upstream, f"/v2/{repo}/blobs/{digest}")


class RedirectingFront(_Server):
    """A registry with Basic auth in front of an anonymous one; blob GETs are
    redirected: to `cdn` (absolute Location), or to a relative /_storage path
    on this same host (Artifact Registry style)."""

    def __init__(self, upstream: str, username: str, password: str, cdn: CDN | None) -> None:
        self.upstream = upstream
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.cdn = cdn
        self.redirected = 0
        self.storage_served = 0
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path = urlsplit(req.path).path
        if path.startswith("/_storage/"):
            # Same origin as the registry, so credentials may come; they are not needed.
            repo, _, digest = path.removeprefix("/_storage/").rpartition("/")
            self.storage_served += 1
            relay(req, self.upstream, f"/v2/{repo}/blobs/{digest}")
            return
        if req.headers.get("Authorization") != self.expected:
            _answer(
                req,
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}',
                {"WWW-Authenticate": 'Basic realm="front"', "Content-Type": "application/json"},
            )
            return
        m = _BLOB_RE.match(path)
        if m and req.command == "GET":
            self.redirected += 1
            if self.cdn is not None:
                location = f"{self.cdn.url}/cdn/{m['repo']}/{m['digest']}?X-Amz-Signature=abc%2Fdef"
            else:
                location = f"/_storage/{m['repo']}/{m['digest']}?X-Goog-Signature=abc%2Fdef"
            _answer(req, 307, headers={"Location": location})
            return
        relay(req, self.upstream, req.path)


class ECRApiFront(_Server):
    """In front of moto's ECR API: counts GetAuthorizationToken calls, checks
    they are SigV4-signed with the right key id (and never carry the secret),
    and shortens the token's life to `lifetime` seconds past the refresh margin."""

    def __init__(self, moto_url: str, access_key_id: str, secret: str, lifetime: float) -> None:
        self.moto_url = moto_url
        self.access_key_id = access_key_id
        self.secret = secret
        self.lifetime = lifetime
        self.calls = 0
        self.last_call = 0.0  # time.monotonic() of the last GetAuthorizationToken
        self.problems: list[str] = []
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        self.last_call = time.monotonic()
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length)
        auth = req.headers.get("Authorization", "")
        if not auth.startswith(f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/"):
            self.problems.append("not SigV4-signed with the access key id")
        if "/ecr/aws4_request" not in auth:
            self.problems.append("not signed for the ecr service")
        if self.secret in auth or self.secret.encode() in body or any(self.secret in v for v in req.headers.values()):
            self.problems.append("the secret access key was sent")
        self.calls += 1
        target = urlsplit(self.moto_url)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "connection")}
        conn.request("POST", req.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read())
        for item in data.get("authorizationData", []):
            item["expiresAt"] = time.time() + 3600 + self.lifetime
        out = json.dumps(data).encode()
        conn.close()
        _answer(req, resp.status, out, {"Content-Type": "application/x-amz-json-1.1"})


class RateLimitedFront(_Server):
    """Docker Hub's pull allowance: RateLimit-* headers on manifest answers,
    then 429 TOOMANYREQUESTS with Retry-After once `allowance` is spent."""

    def __init__(self, upstream: str, allowance: int) -> None:
        self.upstream = upstream
        self.remaining = allowance
        self.allowance = allowance
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        if "/manifests/" not in req.path:
            relay(req, self.upstream, req.path)
            return
        if self.remaining <= 0:
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}'
            _answer(req, 429, body, {"Retry-After": "7", "Content-Type": "application/json"})
            return
        self.remaining -= 1
        limits = {"RateLimit-Limit": f"{self.allowance};w=21600", "RateLimit-Remaining": f"{self.remaining};w=21600"}
        relay(req, self.upstream, req.path, response_headers=limits)


class DenyingFront(_Server):
    """GHCR with a wrong token: 403 DENIED on every request, and no challenge."""

    def __init__(self) -> None:
        self.requests = 0
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        body = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
        _answer(req, 403, body, {"Content-Type": "application/json"})
