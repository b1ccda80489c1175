"""The access log: one JSON line per request on the proxy listener, and its metrics.

The line carries a request id (also sent as X-Request-Id), the route, app,
registry slug, status, bytes and duration; never a license ID, token,
Authorization header or query string of the token endpoint. A client that left
before its answer was complete is logged and counted as 499 (proxy.logs).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy import metrics
from proxy.context import CTX_KEY, REQUEST_ID
from proxy.logs import reported_status


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        c = request.get(CTX_KEY)
        # aiohttp logs an answer it could not finish sending too: the client had gone.
        unfinished = not getattr(response, "_eof_sent", True)
        fields: dict[str, Any] = {
            "request_id": request.get(REQUEST_ID),
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
    metrics.child(metrics.REQUESTS, route, method if method in METHOD_LABELS else "other", str(status)).inc()
    metrics.child(metrics.DURATION, route).observe(seconds)
    if c is not None and c.bytes_sent and route in ("manifests", "blobs"):
        metrics.child(metrics.BYTES_SENT, route.rstrip("s")).inc(c.bytes_sent)
