"""/metrics on the admin listener: valid exposition, bounded labels, scraped by a real Prometheus."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp

from tests.support.client import ProxyClient, basic
from tests.support.deployment import Deployment
from tests.support.procs import ManagedProcess, free_port, wait_http


async def _pull_once(deployment: Deployment) -> None:
    client = ProxyClient(deployment)
    img = deployment.upstreams["vendor-basic"].images["oci"]
    ans = await client.request(
        "GET",
        f"/v2/proxy/acme/vendor-basic/{img.repo}/manifests/v1",
        headers={"Authorization": basic(deployment.licenses["valid"]), "Accept": img.media_type},
    )
    assert ans.status == 200


async def _metrics_text(deployment: Deployment) -> str:
    async with aiohttp.ClientSession() as s, s.get(deployment.server.admin_url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_promtool_finds_the_exposition_clean(deployment: Deployment):
    await _pull_once(deployment)
    text = await _metrics_text(deployment)
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr
    assert 'pullgate_requests_total{method="GET",route="manifests",status="200"}' in text
    assert 'pullgate_upstream_requests_total{registry="vendor-basic",status="200"}' in text
    assert 'pullgate_license_checks_total{result="ok"}' in text
    # Labels come from configured names only: no license, customer, address or secret.
    deployment.assert_clean(text, "/metrics")
    for leak in ("Customer valid", "127.0.0.1", "valid@example.test"):
        assert leak not in text


async def test_a_real_prometheus_scrapes_the_pull_counter(deployment: Deployment, tmp_path: Path):
    await _pull_once(deployment)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "pullgate",
                        "static_configs": [{"targets": [deployment.server.admin_url.split("//")[1]]}],
                    }
                ],
            }
        )
    )
    prom = ManagedProcess(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        tmp_path,
        "prometheus",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http, base + "/-/ready", 30, prom)
        query = urllib.parse.urlencode({"query": 'sum(pullgate_requests_total{route="manifests",status="200"})'})
        deadline = time.monotonic() + 30
        value = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/query?{query}", timeout=5) as r:  # noqa: S310 - loopback
                    result = json.loads(r.read())["data"]["result"]
            except urllib.error.HTTPError:  # 503 while the TSDB is still starting
                result = []
            if result:
                value = float(result[0]["value"][1])
                break
            await asyncio.sleep(0.5)
        assert value is not None and value >= 1, prom.log_text()[-2000:]
    finally:
        prom.stop()


async def test_health_and_readiness(deployment: Deployment):
    async with aiohttp.ClientSession() as s:
        async with s.get(deployment.server.admin_url + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with s.get(deployment.server.admin_url + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"store": True, "keyring": True})
        # Not on the proxy listener.
        async with s.get(deployment.url + "/readyz") as r:
            assert r.status == 404
