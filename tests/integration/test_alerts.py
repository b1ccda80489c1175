"""Prometheus alerting rules (deploy/prometheus): `promtool check rules` and the
rules' unit tests with `promtool test rules` (each alert fires on the trouble it
names, with its labels and annotations, and stays quiet on healthy traffic).
promtool comes from Debian's `prometheus` package: missing, the tests skip
locally and fail under CI=true."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.ci import unavailable
from tests.unit.test_alerts import ALERTS, RULE_TESTS, RULES, RULES_DIR


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool missing (Debian package prometheus)")
    return found


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=RULES_DIR)


def test_promtool_check_rules_passes(promtool: str) -> None:
    res = _run(promtool, "check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in res.stdout, res.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    res = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.parametrize(
    ("rule", "broken", "alert"),
    [
        ("< 14 * 86400", "< 7 * 86400", "PullgateCertificateExpiringSoon"),
        (
            "(increase(pullgate_digest_mismatch_total[10m])) > 0",
            "(increase(pullgate_digest_mismatch_total[10m])) > 1",
            "PullgateDigestMismatch",
        ),
        (
            "(increase(pullgate_egress_refused_total[15m])) > 5",
            "(increase(pullgate_egress_refused_total[15m])) > 0",
            "PullgateEgressRefusals",
        ),
        (
            "(rate(pullgate_upstream_pool_refused_total[5m])) > 0\n        for: 10m",
            "(rate(pullgate_upstream_pool_refused_total[5m])) > 0\n        for: 1m",
            "PullgateUpstreamPoolSaturated",
        ),
    ],
)
def test_a_broken_threshold_fails_the_unit_tests(
    promtool: str, tmp_path: Path, rule: str, broken: str, alert: str
) -> None:
    """The unit tests bite: each threshold moved (a window, a count, a duration) fails them."""
    text = RULES.read_text(encoding="utf-8")
    assert rule in text
    (tmp_path / RULES.name).write_text(text.replace(rule, broken), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    res = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode != 0 and alert in res.stdout + res.stderr
