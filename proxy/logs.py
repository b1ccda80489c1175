"""Logging: JSON lines on stderr. Never a secret.

The access line of each request is written by proxy.accesslog. A request whose
client hung up before its answer was complete is logged and counted as 499
(nginx's "client closed request"), never as a server error; a stream the proxy
cut for the client's sake (too slow) too. A stream cut because the upstream
broke keeps its status, with `aborted` saying why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        return json.dumps(out, default=str)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger is replaced by ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_parser_refusals()


class ParserRefusals(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a line too long, a bad header) at
    ERROR with a traceback and the offending bytes, which may hold a credential. That is
    the client's error, answered 400: one INFO line naming the kind, nothing of the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed request: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_parser_refusals() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserRefusals) for f in server.filters):
        server.addFilter(ParserRefusals())


CLIENT_CLOSED = 499
# PullContext.aborted reasons that are the client's doing.
CLIENT_ABORTS = ("client", "slow")


def client_gone(request: web.BaseRequest) -> bool:
    """The client's connection is closed or closing: nothing more can reach it."""
    transport = request.transport
    return transport is None or transport.is_closing()


def reported_status(status: int, c: Any, client_left: bool) -> int:
    """The status to log and count: 499 when the client left before its answer was complete."""
    aborted = getattr(c, "aborted", None)
    if aborted is not None:
        return CLIENT_CLOSED if aborted in CLIENT_ABORTS else status
    return CLIENT_CLOSED if client_left else status
