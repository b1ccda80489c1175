"""Prometheus collectors. Labels come only from configured names (routes,
registry and app slugs) and status codes: never a license, customer or IP.

Several workers (`pullgate serve --workers N`): the supervisor sets
PROMETHEUS_MULTIPROC_DIR before they start, so prometheus_client keeps every
value in a per-process file there, and `/metrics`, whichever worker answers it,
reads them all: counters and histograms are summed over the workers (dead ones
included, so totals never go back), and each gauge says how it combines
(`multiprocess_mode`: `livesum` for things in flight, `mostrecent` for values
read from outside). A new Gauge must choose its mode too.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

REGISTRY = CollectorRegistry(auto_describe=True)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("pullgate_requests", "Proxy requests answered", ["route", "method", "status"], registry=REGISTRY)
DURATION = Histogram(
    "pullgate_request_duration_seconds",
    "Time to answer a proxy request, body included",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
BYTES_SENT = Counter("pullgate_bytes_sent", "Body bytes streamed to clients", ["kind"], registry=REGISTRY)
STREAMS_IN_FLIGHT = Gauge(
    "pullgate_streams_in_flight", "Bodies being streamed right now", registry=REGISTRY, multiprocess_mode="livesum"
)
STREAMS_ABORTED = Counter(
    "pullgate_streams_aborted",
    "Streams cut mid-body, by reason: upstream | client | slow | digest",
    ["reason"],
    registry=REGISTRY,
)

DIGEST_MISMATCH = Counter(
    "pullgate_digest_mismatch",
    "Upstream bodies that did not hash to the digest asked for (the client was cut off)",
    ["registry", "kind"],  # kind: manifest | blob
    registry=REGISTRY,
)

LICENSE_CHECKS = Counter(
    "pullgate_license_checks", "License checks by outcome", ["result"], registry=REGISTRY
)  # result: ok | unknown | revoked | archived | expired | wrong_app
AUTH_FAILURES = Counter(
    "pullgate_auth_failures", "Refused client authentications by reason", ["reason"], registry=REGISTRY
)  # reason: missing | malformed | bad_license | bad_token | scope | denied

UPSTREAM_REQUESTS = Counter(
    "pullgate_upstream_requests", "Requests to vendor registries", ["registry", "status"], registry=REGISTRY
)
UPSTREAM_LATENCY = Histogram(
    "pullgate_upstream_first_byte_seconds",
    "Time to a vendor registry's response headers",
    ["registry"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
UPSTREAM_TOKEN_FETCHES = Counter(
    "pullgate_upstream_token_fetches",
    "Credentials fetched from registries' token services",
    ["registry", "kind"],
    registry=REGISTRY,
)
UPSTREAM_RATELIMIT_REMAINING = Gauge(
    "pullgate_upstream_ratelimit_remaining",
    "Pulls left in the registry's rate-limit window (Docker Hub)",
    ["registry"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
UPSTREAM_TOKEN_CACHE_HITS = Counter(
    "pullgate_upstream_token_cache_hits",
    "Upstream requests served by a cached registry token",
    ["registry"],
    registry=REGISTRY,
)
CERT_EXPIRY = Gauge(
    "pullgate_certificate_expiry_timestamp_seconds",
    "When a served TLS certificate expires (Unix time)",
    ["hostname"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
ANONYMOUS_LIMITED = Counter(
    "pullgate_anonymous_rate_limited", "Anonymous requests refused by the per-address rate limit", registry=REGISTRY
)
# Egress policy and upstream pool (proxy.egress, proxy.upstream.pool).
EGRESS_REFUSED = Counter(
    "pullgate_egress_refused",
    "Outbound connections refused by the egress policy, before connecting",
    ["registry", "rule"],
    registry=REGISTRY,
)
UPSTREAM_POOL_IN_USE = Gauge(
    "pullgate_upstream_pool_in_use",
    "Upstream connections held per registry (upstream.pool_per_registry)",
    ["registry"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
UPSTREAM_POOL_REFUSED = Counter(
    "pullgate_upstream_pool_refused",
    "Requests refused because their registry had no free upstream connection",
    ["registry"],
    registry=REGISTRY,
)

# What the limits (DESIGN "Limits") refused.
CONNECTIONS_OPEN = Gauge(
    "pullgate_connections_open",
    "Open connections on the proxy listener",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    "pullgate_connections_refused", "Proxy connections closed by a limit", ["reason"], registry=REGISTRY
)  # reason: max_connections | header_timeout | body_timeout (the token form, trickled)
STREAMS_REFUSED = Counter(
    "pullgate_streams_refused",
    "Manifest and blob GETs refused with 429: too many concurrent bodies",
    ["reason"],  # license | address
    registry=REGISTRY,
)
LICENSE_IMPORTS_THROTTLED = Counter(
    "pullgate_license_imports_throttled", "KOTS license imports refused with 429 (per-team rate)", registry=REGISTRY
)


LOG_DROPPED = Counter(
    "pullgate_log_dropped", "Log lines dropped because the log writer's queue was full", registry=REGISTRY
)

ASYNCIO_TASKS = Gauge(
    "pullgate_asyncio_tasks",
    "asyncio tasks alive in the process (workers summed), sampled every few seconds (leak detection)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
WORKER_REQUESTS = Counter(
    "pullgate_worker_requests",
    "Proxy requests taken, by worker index (serve --workers N): how evenly the kernel spreads them",
    ["worker"],
    registry=REGISTRY,
)


def observe_ratelimit(slug: str, remaining: str | None) -> None:
    """Docker Hub sends `RateLimit-Remaining: 76;w=21600`."""
    if remaining:
        head = remaining.split(";", 1)[0].strip()
        if head.isdigit():
            UPSTREAM_RATELIMIT_REMAINING.labels(slug).set(int(head))


# The hot path's labelled children, found once: `labels()` validates and locks on every call.
# Bounded like the label space itself (configured names, routes, statuses).
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}
_CHILDREN_MAX = 50_000


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, memoized (not for a metric whose series get removed)."""
    key = (id(metric), values)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= _CHILDREN_MAX:
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*values)
    return found


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> bytes:
    """This process's metrics, or every worker's combined when several share the directory."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    combined = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(combined)
    return generate_latest(combined)


async def handler(_: web.Request) -> web.Response:
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
    # Reading every worker's files is file I/O: off the event loop.
    body = await asyncio.to_thread(exposition) if multiprocess_dir() else exposition()
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp
