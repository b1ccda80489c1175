"""Logging: JSON lines, one access line per request. Never a secret.

The access line carries a request id (also sent as X-Request-Id), the route,
app, registry slug, status, bytes and duration; never a license ID, token,
Authorization header or query string of the token endpoint.

A request whose client hung up before its answer was complete is logged and
counted as 499 (nginx's "client closed request"), never as a server error; a
stream the proxy cut for the client's sake (too slow) too. A stream cut because
the upstream broke keeps its status, with `aborted` saying why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
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
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorsAreNotOurs) for f in server_log.filters):
        server_log.addFilter(ClientErrorsAreNotOurs())


class ClientErrorsAreNotOurs(logging.Filter):
    """aiohttp logs a request it could not parse (bad header, smuggling attempt, oversize
    line) at error level with a traceback. That is the client's error, answered 400 and
    in the access log: any client could otherwise fill the log with errors and page the
    operator. Down to info, without the traceback; real server errors stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = f"{record.getMessage()}: a malformed request ({type(exc).__name__})", None
            record.exc_info, record.exc_text = None, None
        return True


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


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        from proxy.oci.routes import CTX_KEY  # local: keep logs importable alone

        c = request.get(CTX_KEY)
        # aiohttp logs an answer it could not finish sending too: the client had gone.
        unfinished = not getattr(response, "_eof_sent", True)
        fields: dict[str, Any] = {
            "request_id": request.get("request_id"),
            "method": request.method,
            "route": c.route if c else "other",
            "status": reported_status(response.status, c, unfinished),
            "bytes": c.bytes_sent if c and c.bytes_sent else response.body_length,
            "duration_ms": round(time * 1000, 2),
        }
        if c is not None:
            fields.update(app=c.app, registry=c.registry, customer=c.customer_id, license=c.license_ref)
            if c.aborted:
                fields["aborted"] = c.aborted
        record_metrics(fields["route"], request.method, fields["status"], time, c)
        self.logger.info("access", extra={"fields": fields})


# The method is client input: a metric label takes only these (without aiohttp's C parser any
# token is a method, and each would be a new series kept for ever).
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def record_metrics(route: str, method: str, status: int, seconds: float, c: Any) -> None:
    from proxy import metrics

    metrics.REQUESTS.labels(route, method if method in METHOD_LABELS else "other", str(status)).inc()
    metrics.DURATION.labels(route).observe(seconds)
    if c is not None and c.bytes_sent and route in ("manifests", "blobs"):
        metrics.BYTES_SENT.labels(route.rstrip("s")).inc(c.bytes_sent)
