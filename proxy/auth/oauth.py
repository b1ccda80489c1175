"""The OAuth2 error answers of the token endpoint's POST form (RFC 6749 §5.2).

containerd posts the OAuth2 password form first and reads `error`; on a 400 or a 401
it falls back to GET with HTTP Basic, which answers OCI errors. Every error of the
form is `{"error": ..., "error_description": ...}` with the error's own status.

Not answered: `invalid_client` and `unauthorized_client`. pullgate authenticates no
OAuth2 client (`client_id` is taken and ignored, as for a public client, RFC 6749
§2.1), so no client can fail to authenticate or be refused a grant type.
"""

from __future__ import annotations

from enum import StrEnum, unique

from aiohttp import web


@unique
class OAuthCode(StrEnum):
    """An OAuth2 `error` value and its one HTTP status."""

    status: int

    def __new__(cls, value: str, status: int) -> OAuthCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        return member

    # RFC 6749 §5.2: a 400 each.
    INVALID_REQUEST = "invalid_request", 400  # a parameter missing, repeated or unreadable; a bad Host
    INVALID_GRANT = "invalid_grant", 400  # the password (a license ID) is not a usable license
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type", 400  # only `password` is
    INVALID_SCOPE = "invalid_scope", 400  # malformed, or beyond what the license grants
    # Throttled after too many failed licenses. OAuth2 has no code for it: `slow_down`
    # (RFC 8628 §3.5) is the registered token-endpoint error that says "ask less often",
    # with 429 and Retry-After (RFC 6585) saying how long to wait.
    SLOW_DOWN = "slow_down", 429
    # The store cannot be reached: the server's trouble, not the client's (RFC 6749 §4.1.2.1).
    TEMPORARILY_UNAVAILABLE = "temporarily_unavailable", 503


class OAuthError(Exception):
    """Raised by the POST form's steps; answered as an OAuth2 error body."""

    def __init__(self, code: OAuthCode, description: str, headers: dict[str, str] | None = None) -> None:
        if not isinstance(code, OAuthCode):
            raise TypeError(f"OAuthError takes an OAuthCode, not {code!r}")
        super().__init__(f"{code.value}: {description}")
        self.code = code
        self.description = description
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": self.code.value, "error_description": self.description}
        # RFC 6749 §5.1 asks this of token answers; an error is one too.
        headers = {"Cache-Control": "no-store", **self.headers}
        return web.json_response(body, status=self.code.status, headers=headers)
