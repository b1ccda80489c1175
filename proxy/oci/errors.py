"""OCI error bodies: {"errors":[{"code","message","detail"}]} with the right status."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

STATUS = {
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "NAME_UNKNOWN": 404,
    "MANIFEST_UNKNOWN": 404,
    "BLOB_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "TAG_INVALID": 400,
    "DIGEST_INVALID": 400,
    "MANIFEST_INVALID": 400,
    "PAGINATION_NUMBER_INVALID": 400,
    "RANGE_INVALID": 416,
    "SIZE_INVALID": 400,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "UPSTREAM_ERROR": 502,
    "UPSTREAM_UNAVAILABLE": 503,
    "UPSTREAM_TIMEOUT": 504,
    "UNAVAILABLE": 503,  # the proxy's own database cannot be reached right now
}


class OCIError(Exception):
    """Raised anywhere in a handler; the middleware renders it."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)
        self.detail = detail
        self.headers = headers or {}

    def response(self, head: bool = False) -> web.Response:
        body = json.dumps({"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", **self.headers}
        if head:
            # HEAD answers carry the length the GET would have, and no body.
            headers["Content-Length"] = str(len(body))
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, body=body, headers=headers)
