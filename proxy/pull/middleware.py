"""Every answer on the proxy listener is an OCI error body when it is an error.

Unexpected exceptions are logged by type and location only (their messages may
carry upstream URLs) and become a bare 500; a traceback never reaches a client.
A client that hung up mid-request is not a server error: it is answered (and so
logged and counted) as 499, as nginx does, at info level.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.logs import CLIENT_CLOSED, client_gone
from proxy.oci.errors import ErrorCode, OCICode, OCIError, PullgateCode

log = logging.getLogger("pullgate.oci")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own refusals (no route, a method no route takes, a body over client_max_size)
# keep aiohttp's status; the code says what it means to a registry client.
_HTTP_CODES: dict[int, tuple[ErrorCode, str]] = {
    404: (OCICode.NAME_UNKNOWN, "not found"),
    405: (OCICode.UNSUPPORTED, "method not supported"),
    413: (OCICode.SIZE_INVALID, "request body too large"),
}


@web.middleware
async def oci_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    head = request.method == "HEAD"
    try:
        return await handler(request)
    except OCIError as exc:
        return exc.response(head)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, (PullgateCode.BAD_REQUEST, exc.reason))
        return OCIError(code, message, status=exc.status).response(head)
    except Exception as exc:
        if isinstance(exc, ConnectionError) and client_gone(request):
            log.debug("client closed the connection (%s)", type(exc).__name__)  # the access line says 499
            return client_closed_response()
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
        log.error("internal error %s at %s", type(exc).__name__, where)
        return OCIError(PullgateCode.INTERNAL_ERROR, "internal error").response(head)


def client_closed_response() -> web.Response:
    """Never sent (there is no one to send it to); it makes the access log and metrics say 499."""
    return web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")
