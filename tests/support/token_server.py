"""A Docker-style token server (the `auth.token.realm` of a docker-registry) for tests.

It signs RS256 JWTs with a self-signed certificate that the registry trusts through
`auth.token.rootcertbundle`, and records every request so tests can count token fetches
and see which requests carried credentials.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.procs import free_port

HeaderMode = Literal["x5c", "kid", "both"]


@dataclass(frozen=True)
class TokenFetch:
    method: str
    scope: str  # the requested scopes joined by a space ("" when none)
    user: str | None  # Basic username sent, None without Basic
    status: int  # what we answered: 200, 400 or 401


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """docker/libtrust's key id: base32 of sha256(DER SubjectPublicKeyInfo)[:30], in 4-char groups.

    docker-registry 2.8 maps each rootcertbundle certificate's key to this id and uses it
    when a token header has a `kid` but no `x5c`.
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i : i + 4] for i in range(0, len(s), 4))


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """`repository:vendor/oci:pull,push` -> ("repository", "vendor/oci", ["pull", "push"])."""
    typ, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return typ, name, [a for a in actions.split(",") if a]


class TokenServer:
    """Serves `GET <realm_path>?service=&scope=` (and the OAuth2 password-grant POST).

    `users` maps username -> password (HTTP Basic). `grants` maps username -> actions it
    may get (`"*"` for any); a user not in `grants` gets an empty access list. With
    `grants=None` every authenticated user gets every action requested.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        service: str = "pullgate-test-registry",
        issuer: str = "pullgate-test-issuer",
        realm_path: str = "/token",
        expires_in: int = 300,
        grants: Mapping[str, Collection[str]] | None = None,
        header_mode: HeaderMode = "both",
        cert_path: Path,
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.realm_path = realm_path
        self.expires_in = expires_in
        self.grants = None if grants is None else {u: set(a) for u, a in grants.items()}
        self.header_mode = header_mode
        self.cert_path = Path(cert_path)
        self._lock = threading.Lock()
        self.fetches: list[TokenFetch] = []
        # (method, path, Authorization value) of every request, any path, that carried one.
        self.authorized_requests: list[tuple[str, str, str]] = []
        self.tokens: list[str] = []  # every token issued, in order

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = _self_signed(self._key)
        self.cert_path.parent.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.key_id = libtrust_key_id(self._key.public_key())

        self.port = free_port()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    # -- what the registry config and tests need ------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return self.url + self.realm_path

    @property
    def fetch_count(self) -> int:
        """Requests to the realm path (GET or POST), whatever they were answered."""
        with self._lock:
            return len(self.fetches)

    @property
    def issued_count(self) -> int:
        with self._lock:
            return sum(1 for f in self.fetches if f.status == 200)

    @property
    def seen(self) -> list[tuple[str, str | None]]:
        with self._lock:
            return [(f.scope, f.user) for f in self.fetches]

    @property
    def authorized_count(self) -> int:
        with self._lock:
            return len(self.authorized_requests)

    def reset(self) -> None:
        with self._lock:
            self.fetches.clear()
            self.authorized_requests.clear()
            self.tokens.clear()

    def issue(self, user: str, scopes: Collection[str], service: str | None = None) -> str:
        """Sign a token for `user` granting what `grants` allows of `scopes`."""
        now = int(time.time())
        access = []
        for scope in scopes:
            typ, name, actions = parse_scope(scope)
            if self.grants is not None:
                allowed = self.grants.get(user, set())
                actions = [a for a in actions if "*" in allowed or a in allowed]
            if typ and name:
                access.append({"type": typ, "name": name, "actions": actions})
        claims = {
            "iss": self.issuer,
            "sub": user,
            # 2.8 declares `aud` as a plain string; a list would not unmarshal.
            "aud": service or self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        headers: dict[str, object] = {"typ": "JWT"}
        if self.header_mode in ("x5c", "both"):
            headers["x5c"] = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]
        if self.header_mode in ("kid", "both"):
            headers["kid"] = self.key_id
        token = jwt.encode(claims, self._key, algorithm="RS256", headers=headers)
        with self._lock:
            self.tokens.append(token)
        return token

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------------------
    def _check_basic(self, header: str | None) -> tuple[str | None, bool]:
        if not header or not header.lower().startswith("basic "):
            return None, False
        try:
            user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        ok = user in self.users and secrets.compare_digest(self.users[user], pw)
        return user, ok

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        auth = h.headers.get("Authorization")
        url = urllib.parse.urlsplit(h.path)
        with self._lock:
            if auth:
                self.authorized_requests.append((method, h.path, auth))
        if url.path != self.realm_path:
            return _reply(h, 404, {"errors": [{"code": "NOT_FOUND"}]})
        q = urllib.parse.parse_qs(url.query)
        if method == "POST":  # OAuth2 password grant, as containerd sends it first
            n = int(h.headers.get("Content-Length") or 0)
            q = urllib.parse.parse_qs(h.rfile.read(n).decode())
        scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
        service = (q.get("service") or [self.service])[0]
        if method == "POST":
            if (q.get("grant_type") or [""])[0] != "password":
                err = {"error": "unsupported_grant_type"}
                return self._record(h, method, scopes, None, 400, err)
            user = (q.get("username") or [""])[0]
            pw = (q.get("password") or [""])[0]
            ok = user in self.users and secrets.compare_digest(self.users[user], pw)
        else:
            u, ok = self._check_basic(auth)
            user = u or ""
        if not ok:
            return self._record(h, method, scopes, user or None, 401, {"errors": [{"code": "UNAUTHORIZED"}]})
        token = self.issue(user, scopes, service)
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued,
        }
        self._record(h, method, scopes, user, 200, body)

    def _record(
        self,
        h: BaseHTTPRequestHandler,
        method: str,
        scopes: list[str],
        user: str | None,
        status: int,
        body: dict[str, object],
    ) -> None:
        with self._lock:
            self.fetches.append(TokenFetch(method, " ".join(scopes), user, status))
        extra = {"WWW-Authenticate": 'Basic realm="pullgate-test-token"'} if status == 401 else {}
        _reply(h, status, body, extra)


def _reply(h: BaseHTTPRequestHandler, status: int, body: object, headers: Mapping[str, str] = {}) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real token services

        def do_GET(self) -> None:
            server._handle(self, "GET")

        def do_POST(self) -> None:
            server._handle(self, "POST")

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output clean; fetches are recorded instead

    return Handler


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pullgate-test-token-signer")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
