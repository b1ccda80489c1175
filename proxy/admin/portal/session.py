"""Portal sessions: a sealed cookie, a CSRF token inside it, and logout.

The cookie is AES-GCM under a key derived (HKDF, its own info string) from the
master keyring, so it is both tamper-proof and unreadable, and every replica
sharing the keyring accepts it: no session table. It carries the SHA-256 of
the API token used to log in, looked up on every request, so deleting that
token ends its sessions. The CSRF token is a random value kept inside the
sealed cookie (synchronizer token): a page from another origin can neither
read it nor, with SameSite=Strict, send the cookie at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.secrets import Keyring

SESSION_COOKIE = "pullgate_session"
LOGIN_COOKIE = "pullgate_login"  # before login: holds the login form's CSRF token
FLASH_COOKIE = "pullgate_flash"
SESSION_TTL = 8 * 3600
LOGIN_TTL = 3600
_INFO = b"pullgate portal session v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    sid: str
    team_id: str
    token_hash: str
    csrf: str
    expires: int


class Sealer:
    """Seals small JSON payloads into cookie values, bound to a purpose (AAD)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keys: dict[tuple[str, bytes], bytes] = {}

    def _key(self, kid: str) -> bytes | None:
        master = self.keyring.keys.get(kid)
        if master is None:
            return None
        cache_key = (kid, master)
        if cache_key not in self._keys:
            self._keys[cache_key] = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master)
        return self._keys[cache_key]

    def seal(self, payload: dict[str, Any], purpose: str) -> str:
        kid = self.keyring.current
        key = self._key(kid)
        assert key is not None
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, json.dumps(payload, separators=(",", ":")).encode(), purpose.encode())
        return f"{kid}.{_b64(nonce + ct)}"

    def open(self, value: str | None, purpose: str) -> dict[str, Any] | None:
        """The payload, or None for anything missing, forged, expired or of another purpose."""
        if not value or len(value) > 4096:
            return None
        kid, _, blob = value.partition(".")
        key = self._key(kid)
        if key is None:
            return None
        try:
            raw = _unb64(blob)
            data = json.loads(AESGCM(key).decrypt(raw[:12], raw[12:], purpose.encode()))
        except (InvalidTag, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] < time.time():
            return None
        return data


class Sessions:
    def __init__(self, keyring: Keyring) -> None:
        self.sealer = Sealer(keyring)
        # Logged-out session ids until they would have expired anyway. Per process:
        # with several replicas a copied cookie outlives logout there until its expiry
        # (deleting the API token ends it everywhere).
        self._ended: dict[str, int] = {}

    def new(self, team_id: str, token: str) -> tuple[Session, str]:
        s = Session(
            secrets.token_urlsafe(16),
            team_id,
            token_hash(token),
            secrets.token_urlsafe(24),
            int(time.time()) + SESSION_TTL,
        )
        payload = {"sid": s.sid, "tid": s.team_id, "th": s.token_hash, "csrf": s.csrf, "exp": s.expires}
        return s, self.sealer.seal(payload, "session")

    def read(self, value: str | None) -> Session | None:
        data = self.sealer.open(value, "session")
        if data is None or data.get("sid") in self._ended:
            return None
        try:
            return Session(data["sid"], data["tid"], data["th"], data["csrf"], data["exp"])
        except KeyError:
            return None

    def end(self, session: Session) -> None:
        now = time.time()
        self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
        self._ended[session.sid] = session.expires

    def new_login(self) -> tuple[str, str]:
        """(csrf token, cookie value) for the login form."""
        csrf = secrets.token_urlsafe(24)
        return csrf, self.sealer.seal({"csrf": csrf, "exp": int(time.time()) + LOGIN_TTL}, "login")

    def login_csrf(self, value: str | None) -> str | None:
        data = self.sealer.open(value, "login")
        return data.get("csrf") if data else None

    def flash(self, message: str, kind: str = "ok") -> str:
        return self.sealer.seal({"msg": message[:500], "kind": kind, "exp": int(time.time()) + 120}, "flash")

    def read_flash(self, value: str | None) -> tuple[str, str] | None:
        data = self.sealer.open(value, "flash")
        return (str(data.get("msg", "")), str(data.get("kind", "ok"))) if data else None


def same_token(given: Any, expected: str | None) -> bool:
    return isinstance(given, str) and bool(expected) and hmac.compare_digest(given.encode(), str(expected).encode())
