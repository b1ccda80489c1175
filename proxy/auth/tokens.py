"""The proxy's own short-lived pull tokens (JWT, HS256, key id in the header).

Signing keys are derived from the master keyring (see proxy.secrets), so every
replica that shares the keyring verifies every other replica's tokens, and a
key rotation retires old tokens once the old key is removed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from proxy.secrets import Keyring, SecretError

ISSUER = "pullgate"
ALGORITHM = "HS256"


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


class TokenIssuer:
    def __init__(self, keyring: Keyring, ttl_seconds: int) -> None:
        self.keyring = keyring
        self.ttl = ttl_seconds

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
                leeway=5,
            )
        except (jwt.PyJWTError, SecretError) as exc:
            raise InvalidToken(type(exc).__name__) from None
        access = []
        for item in claims.get("access") or []:
            if isinstance(item, dict) and item.get("type") in ("repository", "registry"):
                actions = tuple(str(a) for a in item.get("actions") or ())
                access.append(Access(name=str(item.get("name")), actions=actions, type=str(item["type"])))
        return TokenClaims(
            subject=str(claims["sub"]),
            app=str(claims.get("app", "")),
            audience=audience,
            access=tuple(access),
            expires_at=int(claims["exp"]),
        )
