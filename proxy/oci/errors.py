"""OCI error codes, each declared once with its status and default message, and the
error body `{"errors":[{"code","message","detail"}]}` answered with that status.

Two groups, as distribution's `registry/api/errcode` registers them: `OCICode`, the
codes of the OCI Distribution spec ("Error Codes"), and `PullgateCode`, pullgate's
own. An `OCIError` takes one of these members, never a string, so a code a client
cannot look up is impossible to raise.
"""

from __future__ import annotations

import json
from enum import StrEnum, unique
from typing import Any

from aiohttp import web


class _Code(StrEnum):
    """A code as it goes on the wire (the member's string), its one HTTP status and
    its default message."""

    status: int
    message: str

    def __new__(cls, value: str, status: int, message: str) -> _Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.message = message
        return member


@unique
class OCICode(_Code):
    """The fourteen codes of the OCI Distribution spec (v1.1, "Error Codes"); statuses
    as the spec's endpoints and distribution answer them."""

    BLOB_UNKNOWN = "BLOB_UNKNOWN", 404, "blob unknown to registry"
    BLOB_UPLOAD_INVALID = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"
    BLOB_UPLOAD_UNKNOWN = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"
    DIGEST_INVALID = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"
    MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"
    MANIFEST_INVALID = "MANIFEST_INVALID", 400, "manifest invalid"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN", 404, "manifest unknown to registry"
    NAME_INVALID = "NAME_INVALID", 400, "invalid repository name"
    NAME_UNKNOWN = "NAME_UNKNOWN", 404, "repository name not known to registry"
    SIZE_INVALID = "SIZE_INVALID", 400, "provided length did not match content length"
    UNAUTHORIZED = "UNAUTHORIZED", 401, "authentication required"
    DENIED = "DENIED", 403, "requested access to the resource is denied"
    UNSUPPORTED = "UNSUPPORTED", 405, "the operation is unsupported"
    TOOMANYREQUESTS = "TOOMANYREQUESTS", 429, "too many requests"


@unique
class PullgateCode(_Code):
    """pullgate's own codes: NOT in the OCI Distribution spec, so a client may not know
    them (it shows the message). Kept as the strings clients have seen; some are
    distribution's extensions (TAG_INVALID, PAGINATION_NUMBER_INVALID, RANGE_INVALID,
    UNAVAILABLE)."""

    TAG_INVALID = "TAG_INVALID", 400, "manifest tag did not match URI"
    PAGINATION_NUMBER_INVALID = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
    RANGE_INVALID = "RANGE_INVALID", 416, "invalid content range"
    SCOPE_INVALID = "SCOPE_INVALID", 400, "invalid scope"  # the token endpoint's `scope` parameter
    BAD_REQUEST = "BAD_REQUEST", 400, "bad request"  # a refusal of aiohttp's own, not of a route
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT", 408, "the request did not arrive in time"  # limits.header_timeout
    UPSTREAM_ERROR = "UPSTREAM_ERROR", 502, "the vendor's registry answered with an error"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE", 503, "the vendor's registry is unavailable"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT", 504, "the vendor's registry did not answer in time"
    UNAVAILABLE = "UNAVAILABLE", 503, "the service is briefly unavailable; try again"  # its own database
    INTERNAL_ERROR = "INTERNAL_ERROR", 500, "internal error"


ErrorCode = OCICode | PullgateCode

_BY_VALUE: dict[str, ErrorCode] = {code.value: code for group in (OCICode, PullgateCode) for code in group}


def lookup(value: str) -> ErrorCode | None:
    """The declared code with this wire string (e.g. one an upstream sent), or None."""
    return _BY_VALUE.get(value)


class OCIError(Exception):
    """Raised anywhere in a handler; the middleware renders it.

    The status is the code's own; `status` overrides it only where the status was
    decided elsewhere: an upstream's answer relayed, an aiohttp refusal, or an answer
    clients have always had (each such call says why)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        status: int | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(code, OCICode | PullgateCode):
            raise TypeError(f"OCIError takes an OCICode or a PullgateCode, not {code!r}")
        message = message or code.message
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.status = status or code.status
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> bytes:
        error = {"code": self.code.value, "message": self.message, "detail": self.detail}
        return json.dumps({"errors": [error]}).encode()

    def response(self, head: bool = False) -> web.Response:
        body = self.body()
        headers = {"Content-Type": "application/json; charset=utf-8", **self.headers}
        if head:
            # HEAD answers carry the length the GET would have, and no body.
            headers["Content-Length"] = str(len(body))
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, body=body, headers=headers)
