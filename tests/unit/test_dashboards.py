"""The Grafana dashboard (deploy/grafana) and the metric names it and the alerting
rules (deploy/prometheus) use.

Every `pullgate_*` name and every label they select or group by must be one that
pullgate exports today (collected from the live registry after importing every
module under proxy/), so a renamed metric or label breaks the build. The only
exceptions are the pull-through cache's metrics, which DESIGN.md names but the
code does not have yet: listed below, and the test fails once they exist so the
list is cleaned up.
That every query is valid PromQL: tests/integration/test_dashboards.py.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import proxy
from proxy import metrics

ROOT = Path(__file__).resolve().parents[2]


DASHBOARD = ROOT / "deploy" / "grafana" / "pullgate.json"


RULES = ROOT / "deploy" / "prometheus" / "pullgate-alerts.yaml"


# Metrics the dashboard may name before they exist (none now: the cache's are real).
FUTURE_METRICS: set[str] = set()


# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}


SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
}


# Functions and keywords that look like names inside an expression.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}


def exported() -> dict[str, set[str]]:
    """Exposition name -> label names, for every collector pullgate registers."""
    for mod in pkgutil.walk_packages(proxy.__path__, "proxy."):
        if not mod.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(mod.name)  # collectors register at import
    out: dict[str, set[str]] = {}
    # prometheus_client keeps label names on the collector only (no public accessor).
    for collector in set(metrics.REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            for suffix in SUFFIXES[family.type]:
                out[family.name + suffix] = labels
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(p["title"], t["expr"]) for p in _panels(board) for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def _selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    for m in re.finditer(r"\b(pullgate_[a-z0-9_]+)\b(\{[^}]*\})?", expr):
        labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2) or ""))
        yield m.group(1), labels


def _grouping(expr: str) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        found |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return found


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_and_label_used_exists(source: str) -> None:
    known = exported()
    assert "pullgate_requests_total" in known and "pullgate_pull_log_dropped_total" in known
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    assert exprs
    for where, expr in exprs:
        names: set[str] = set()
        for name, labels in _selectors(expr):
            names.add(name)
            if name in FUTURE_METRICS:
                continue
            assert name in known, f"{source} {where!r}: {name} is not exported by pullgate"
            unknown = labels - known[name] - TARGET_LABELS
            assert not unknown, f"{source} {where!r}: {name} has no label {unknown}"
        assert names, f"{source} {where!r}: no pullgate metric in {expr!r}"
        offered = set().union(*(known.get(n, set()) for n in names)) | TARGET_LABELS
        if names & FUTURE_METRICS:
            continue
        assert _grouping(expr) <= offered, f"{source} {where!r}: grouping by {_grouping(expr) - offered}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"] == "pullgate" and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "registry"} <= set(variables)
    used = " ".join(expr for _, expr in dashboard_exprs())
    for metric in (
        "pullgate_requests_total",  # pulls, errors by status
        "pullgate_bytes_sent_total",  # bytes
        "pullgate_upstream_requests_total",  # errors by registry
        "pullgate_upstream_first_byte_seconds_bucket",  # upstream latency
        "pullgate_upstream_token_cache_hits_total",  # token cache hits...
        "pullgate_upstream_token_fetches_total",  # ...against fetches
        "pullgate_streams_in_flight",
        "pullgate_anonymous_rate_limited_total",  # throttling
        "pullgate_auth_failures_total",  # refusals
        "pullgate_cache_hits_total",  # cache hit ratio
        "pullgate_certificate_expiry_timestamp_seconds",
        # Issue 8: what the egress policy, the pool, the limits and digest verification refused.
        "pullgate_egress_refused_total",
        "pullgate_upstream_pool_in_use",
        "pullgate_upstream_pool_refused_total",
        "pullgate_connections_open",
        "pullgate_connections_refused_total",
        "pullgate_streams_refused_total",
        "pullgate_license_imports_throttled_total",
        "pullgate_digest_mismatch_total",
        "pullgate_streams_aborted_total",
    ):
        assert metric in used, metric
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for p in _panels(board):
        assert p["id"] not in ids, p["title"]
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["description"] and p["targets"], p["title"]
        if any(m in t["expr"] for t in p["targets"] for m in FUTURE_METRICS):
            assert "not built yet" in p["description"], f"{p['title']!r}: say the cache metrics are future ones"


def _status_admits(matcher: str, value: str, status: str) -> bool:
    """Does a Prometheus label matcher on `status` admit `status`? (Regexes are anchored.)"""
    if matcher == "=":
        return status == value
    if matcher == "!=":
        return status != value
    hit = re.fullmatch(value, status) is not None
    return hit if matcher == "=~" else not hit


def _error_queries() -> Iterator[tuple[str, str]]:
    """The dashboard's error panels (titled so, or under the Errors row) and every alerting rule."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    row = ""
    for p in _panels(board):
        if p["type"] == "row":
            row = p["title"]
            continue
        if row == "Errors" or "error" in p["title"].lower() or "5xx" in p["title"]:
            yield from ((p["title"], t["expr"]) for t in p["targets"])
    yield from rule_exprs()


def test_no_error_panel_or_alert_counts_a_client_that_hung_up():
    """499 (the client left first) is logged and counted as such: never as a server error."""
    queries = list(_error_queries())
    assert any(where == "Answers by status (non-2xx)" for where, _ in queries)
    for where, expr in queries:
        counted = expr.split(" / ")[0]  # a ratio's denominator may count every request
        for m in re.finditer(r"pullgate_requests_total\{([^}]*)\}", counted):
            matchers = re.findall(r'status\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(1))
            assert matchers, f"{where!r}: pullgate_requests_total without a status matcher counts 499s: {expr}"
            assert not all(_status_admits(op, v, "499") for op, v in matchers), f"{where!r} counts 499: {expr}"
