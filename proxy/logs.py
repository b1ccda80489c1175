"""Logging: JSON lines, one access line per request. Never a secret.

The access line carries a request id (also sent as X-Request-Id), the route,
app, registry slug, status, bytes and duration; never a license ID, token,
Authorization header or query string of the token endpoint.
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


class ParserRefusals(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a line too long, a bad header) at
    ERROR with a traceback and the offending bytes, which may hold a credential. That is
    the client's error, answered 400: one INFO line naming the kind, nothing of the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed request: %s", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_parser_refusals() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserRefusals) for f in server.filters):
        server.addFilter(ParserRefusals())


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        from proxy.oci.routes import CTX_KEY  # local: keep logs importable alone

        c = request.get(CTX_KEY)
        fields: dict[str, Any] = {
            "request_id": request.get("request_id"),
            "method": request.method,
            "route": c.route if c else "other",
            "status": response.status,
            "bytes": c.bytes_sent if c and c.bytes_sent else response.body_length,
            "duration_ms": round(time * 1000, 2),
        }
        if c is not None:
            fields.update(app=c.app, registry=c.registry, customer=c.customer_id, license=c.license_ref)
        record_metrics(fields["route"], request.method, response.status, time, c)
        self.logger.info("access", extra={"fields": fields})


def record_metrics(route: str, method: str, status: int, seconds: float, c: Any) -> None:
    from proxy import metrics

    metrics.REQUESTS.labels(route, method, str(status)).inc()
    metrics.DURATION.labels(route).observe(seconds)
    if c is not None and c.bytes_sent and route in ("manifests", "blobs"):
        metrics.BYTES_SENT.labels(route.rstrip("s")).inc(c.bytes_sent)
