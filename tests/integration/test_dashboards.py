"""Every query of the Grafana dashboard is valid PromQL, checked by `promtool check rules`
(the metric names and labels it uses: tests/unit/test_dashboards.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.ci import unavailable
from tests.unit.test_dashboards import dashboard_exprs


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool missing (Debian package prometheus)")
    # Grafana's variables replaced by what they expand to; each query as a recording rule.
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$registry", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
