"""The proxy's own short-lived pull tokens (JWT, HS256, key id in the header).

Signing keys are derived from the master keyring (see proxy.secrets), so every
replica that shares the keyring verifies every other replica's tokens, and a
key rotation retires old tokens once the old key is removed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from proxy.secrets import Keyring, SecretError

ISSUER = "pullgate"
ALGORITHM = "HS256"
LEEWAY = 5  # seconds of clock skew allowed on exp/nbf
# Verified tokens remembered (a client pulls many blobs with one token): bounded, since the
# tokens are client input (only verified ones get in, so a flood of forgeries adds nothing).
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class Access:
    """One granted resource and its actions: a repository, or the registry catalog."""

    name: str
    actions: tuple[str, ...]
    type: str = "repository"


@dataclass(frozen=True)
class TokenClaims:
    subject: str  # customer id (never the license ID)
    app: str
    audience: str
    access: tuple[Access, ...]
    expires_at: int

    def allows(self, name: str, action: str = "pull") -> bool:
        return any(a.type == "repository" and a.name == name and action in a.actions for a in self.access)

    def allows_catalog(self) -> bool:
        return any(a.type == "registry" and a.name == "catalog" for a in self.access)


class InvalidToken(Exception):
    """Bad signature, expired, wrong audience or malformed."""


class VerifiedTokens:
    """Tokens whose signature and claims were checked, keyed by the SHA-256 of the token.

    A hit skips the JWT decode (about a tenth of a manifest GET's CPU) but not what can
    change after issue: the expiry is checked again on every hit, and the signing key must
    still be in the keyring (a rotation that removed it retires the token here too). The
    license's state is not cached here: the gate reads it on every request.
    """

    def __init__(self, max_entries: int = VERIFIED_MAX, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[bytes, tuple[TokenClaims, str, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes, audience: str, keyring: Keyring) -> TokenClaims | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        claims, kid, signing = hit
        if claims.audience != audience:
            return None  # verified afresh (and refused) for the other audience
        if self.clock() > claims.expires_at + LEEWAY:
            del self._data[key]
            raise InvalidToken("ExpiredSignatureError")
        try:
            still = keyring.signing_key(kid)[1]
        except SecretError:
            del self._data[key]
            raise InvalidToken("SecretError") from None
        if still != signing:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return claims

    def put(self, key: bytes, claims: TokenClaims, kid: str, signing: bytes) -> None:
        self._data[key] = (claims, kid, signing)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


class TokenIssuer:
    def __init__(self, keyring: Keyring, ttl_seconds: int, verified: VerifiedTokens | None = None) -> None:
        self.keyring = keyring
        self.ttl = ttl_seconds
        self.verified = verified if verified is not None else VerifiedTokens()

    def issue(self, subject: str, app: str, audience: str, access: list[Access]) -> tuple[str, int, int]:
        """Returns (token, issued_at, expires_in)."""
        now = int(time.time())
        kid, key = self.keyring.signing_key()
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.ttl,
            "jti": secrets.token_hex(12),
            "app": app,
            "access": [{"type": a.type, "name": a.name, "actions": list(a.actions)} for a in access],
        }
        token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
        return token, now, self.ttl

    def verify(self, token: str, audience: str) -> TokenClaims:
        cache_key = self.verified.key(token)
        cached = self.verified.get(cache_key, audience, self.keyring)
        if cached is not None:
            return cached
        claims, kid, key = self._decode(token, audience)
        self.verified.put(cache_key, claims, kid, key)
        return claims

    def _decode(self, token: str, audience: str) -> tuple[TokenClaims, str, bytes]:
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise InvalidToken("no key id")
            _, key = self.keyring.signing_key(kid)
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
                leeway=LEEWAY,
            )
        except (jwt.PyJWTError, SecretError) as exc:
            raise InvalidToken(type(exc).__name__) from None
        access = []
        for item in claims.get("access") or []:
            if isinstance(item, dict) and item.get("type") in ("repository", "registry"):
                actions = tuple(str(a) for a in item.get("actions") or ())
                access.append(Access(name=str(item.get("name")), actions=actions, type=str(item["type"])))
        verified = TokenClaims(
            subject=str(claims["sub"]),
            app=str(claims.get("app", "")),
            audience=audience,
            access=tuple(access),
            expires_at=int(claims["exp"]),
        )
        return verified, kid, key
