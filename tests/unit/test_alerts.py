"""The Prometheus alerting rules (deploy/prometheus) as data: every alert has a severity
and its annotations, and is shown firing in a promtool unit test. promtool itself runs
them in tests/integration/test_alerts.py."""

from __future__ import annotations

from pathlib import Path

import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


RULES = RULES_DIR / "pullgate-alerts.yaml"


RULE_TESTS = RULES_DIR / "pullgate-alerts.test.yaml"


# What the rules must cover (issue 13).
ALERTS = {
    "PullgateUpstreamErrors",
    "PullgateGatewayErrors",
    "PullgateUpstreamCredentialsRefused",
    "PullgateClientCredentialsRefused",
    "PullgateCertificateExpiringSoon",
    "PullgateCertificateExpired",
    "PullgateCacheVerificationFailures",
    "PullgatePullLogDrops",
    "PullgateDockerHubAllowanceLow",
    # Issue 8: wrong bytes from a registry, egress refusals, a saturated upstream pool.
    "PullgateDigestMismatch",
    "PullgateEgressRefusals",
    "PullgateUpstreamPoolSaturated",
}


def test_every_alert_is_unit_tested_firing_and_documented() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    fired = set()
    for t in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]:
        for case in t.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                fired.add(case["alertname"])
    assert fired == ALERTS, f"alerts never shown firing in a unit test: {ALERTS - fired}"
