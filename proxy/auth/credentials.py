"""Reading the client's Authorization header, strictly."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from proxy.oci.errors import OCICode, OCIError

MAX_AUTH_HEADER = 8192


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never show the password (a license ID)
        return f"BasicCredentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class BearerCredentials:
    token: str

    def __repr__(self) -> str:
        return "BearerCredentials(token=***)"


Credentials = BasicCredentials | BearerCredentials


def parse_authorization(header: str | None) -> Credentials | None:
    """None when absent; an UNAUTHORIZED OCIError when present but malformed."""
    if header is None:
        return None
    if len(header) > MAX_AUTH_HEADER:
        raise OCIError(OCICode.UNAUTHORIZED, "authorization header too long")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise OCIError(OCICode.UNAUTHORIZED, "malformed basic credentials") from None
        username, sep, password = decoded.partition(":")
        if not sep or not password:
            raise OCIError(OCICode.UNAUTHORIZED, "malformed basic credentials")
        return BasicCredentials(username=username, password=password)
    if scheme == "bearer":
        if not value or " " in value:
            raise OCIError(OCICode.UNAUTHORIZED, "malformed bearer token")
        return BearerCredentials(token=value)
    raise OCIError(OCICode.UNAUTHORIZED, "unsupported authorization scheme")
