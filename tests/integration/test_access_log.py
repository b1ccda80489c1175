"""The proxy's own output: JSON lines, one access line per request, no secret."""

from __future__ import annotations

import hashlib
import json

from tests.support.client import ProxyClient, basic
from tests.support.deployment import Deployment


async def test_access_log_is_json_lines_without_secrets(deployment: Deployment):
    lic = deployment.licenses["valid"]
    client = ProxyClient(deployment)
    await client.token(lic, "repository:proxy/acme/vendor-basic/vendor/oci:pull")
    ans = await client.request(
        "GET",
        "/v2/proxy/acme/vendor-basic/vendor/oci/manifests/v1",
        headers={"Authorization": basic(lic), "Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert ans.status == 200
    rid = ans.headers["X-Request-Id"]
    # The access line is written once the response is sent: it may trail the answer a little.
    assert deployment.server.wait_until(lambda: rid in deployment.server.log_text(), timeout=5)
    text = deployment.server.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line parses
    access = [entry for entry in lines if entry["msg"] == "access"]
    mine = next(e for e in access if e["request_id"] == rid)
    assert mine["route"] == "manifests" and mine["status"] == 200 and mine["app"] == "acme"
    assert mine["registry"] == "vendor-basic" and mine["bytes"] > 0 and mine["duration_ms"] >= 0
    assert mine["license"] == hashlib.sha256(lic.encode()).hexdigest()[:12]
    # The token endpoint's line names the license the same way.
    tokens = [e for e in access if e["route"] == "token" and e["status"] == 200]
    assert tokens and all(e["license"] and len(e["license"]) == 12 for e in tokens)
    deployment.assert_clean(text, "the proxy's log")
