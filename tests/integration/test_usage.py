"""Egress per customer against a running pullgate: customers pull through the proxy, the
vendor API reports the bytes by customer, day, month, app and image from the rollup,
exports them and the pull log as CSV (streamed, spreadsheet-safe), and the CLI shows
the same. Every JSON answer is checked against the OpenAPI document."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.test_vendor_cli import run
from tests.support.poll import apoll
from tests.support.vendor import VendorClient, VendorEnv

OCI = "application/vnd.oci.image.manifest.v1+json"
FORMULA_NAME = '=HYPERLINK("http://evil.test","x")'


@pytest.fixture
def api(vendor_env: VendorEnv) -> VendorClient:
    return VendorClient(vendor_env, "alpha")


async def _pull(env: VendorEnv, license_id: str, path: str) -> int:
    auth = "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(env.server.url + path, headers={"Authorization": auth, "Accept": OCI}) as r:
            body = await r.read()
            assert r.status == 200, body
            return len(body)


async def _csv(
    env: VendorEnv, path: str, params: dict[str, str], accept: str | None = None
) -> tuple[Any, list[list[str]]]:
    headers = {"Authorization": env.tokens["alpha"]}
    if accept:
        headers["Accept"] = accept
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{env.admin}/vendor/v3{path}", params=params, headers=headers) as r:
            text = await r.text()
            env.assert_clean(text, f"the CSV of {path}")
            return r, list(csv.reader(io.StringIO(text)))


async def _setup(api: VendorClient, env: VendorEnv) -> dict[str, Any]:
    up = env.basic
    reg = {"provider": "other", "endpoint": "eg.example.test", "slug": "eg", "url": up.url, "insecure": True,
           "username": up.username, "password": up.password}  # fmt: skip
    assert (await api.call("POST", "/external_registry", reg)).status == 201
    made = {}
    for key, name in (("a", "Egress A"), ("b", FORMULA_NAME)):
        c = (await api.call("POST", "/customer", {"name": name, "appSlug": "alpha-app"})).body["customer"]
        env.canaries.append(c["licenseId"])
        made[key] = c
    img = env.basic.images["oci"]
    base = "/v2/proxy/alpha-app/eg/vendor/oci"
    sizes = {
        "a": await _pull(env, made["a"]["licenseId"], f"{base}/manifests/v1")
        + await _pull(env, made["a"]["licenseId"], f"{base}/blobs/{img.blobs[-1][0]}"),
        "b": await _pull(env, made["b"]["licenseId"], f"{base}/manifests/v1"),
    }
    ids = {made["a"]["id"], made["b"]["id"]}

    async def both_rolled_up() -> bool:
        rows = (await api.call("GET", "/egress", params={"groupBy": "customer"})).body["rows"]
        return {r["customerId"] for r in rows} >= ids

    await apoll(both_rolled_up, 10, "the pulls in the rollup")
    return {"a": made["a"], "b": made["b"], "sizes": sizes, "manifest": len(img.manifest)}


async def test_egress_reports_exports_and_cli(api: VendorClient, vendor_env: VendorEnv):
    s = await _setup(api, vendor_env)
    a, b, sizes = s["a"], s["b"], s["sizes"]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    by_customer = (await api.call("GET", "/egress", params={"groupBy": "customer"})).body
    mine = {r["customerId"]: r for r in by_customer["rows"] if r["customerId"] in (a["id"], b["id"])}
    assert (mine[a["id"]]["bytes"], mine[a["id"]]["pulls"], mine[a["id"]]["requests"]) == (sizes["a"], 1, 2)
    assert (mine[b["id"]]["bytes"], mine[b["id"]]["customerName"], mine[b["id"]]["appSlug"]) == (
        sizes["b"], FORMULA_NAME, "alpha-app")  # fmt: skip
    assert by_customer["totals"]["bytes"] == sum(r["bytes"] for r in by_customer["rows"])

    one = {"customer": a["id"]}
    by_day = (await api.call("GET", "/egress", params=one)).body
    assert by_day["groupBy"] == "day" and by_day["since"] == today[:8] + "01"
    assert by_day["rows"] == [{"day": today, "bytes": sizes["a"], "pulls": 1, "requests": 2}]
    by_month = (await api.call("GET", "/egress", params={**one, "groupBy": "month"})).body["rows"]
    assert [(r["month"], r["bytes"]) for r in by_month] == [(today[:7], sizes["a"])]
    by_image = (await api.call("GET", "/egress", params={**one, "groupBy": "image"})).body["rows"]
    assert [(r["registry"], r["image"]) for r in by_image if r["bytes"]] == [("eg", "vendor/oci")]
    by_app = (await api.call("GET", "/egress", params={**one, "groupBy": "app", "app": "alpha-app"})).body["rows"]
    assert [(r["appSlug"], r["bytes"]) for r in by_app] == [("alpha-app", sizes["a"])]
    before = (await api.call("GET", "/egress", params={**one, "until": today})).body
    assert before["rows"] == [] and before["totals"]["bytes"] == 0

    bad = await api.call("GET", "/egress", params={"groupBy": "week", "since": "soon", "format": "xml", "x": "1"})
    assert bad.status == 400 and len(bad.body["errors"]) == 4
    backwards = await api.call("GET", "/egress", params={"since": "2026-02-01", "until": "2026-01-01"})
    assert backwards.status == 400
    # Another team's customer is not found, as if it did not exist.
    assert (await api.as_team("beta").call("GET", "/egress", params=one)).status == 404
    assert (await api.as_team("beta").call("GET", f"/customer/{a['id']}/egress")).status == 404

    # CSV: the egress report and the pull log, by ?format=csv or Accept.
    r, rows = await _csv(vendor_env, "/egress", {"groupBy": "customer", "format": "csv"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"].startswith('attachment; filename="egress-customer-')
    assert rows[0] == ["customer_id", "customer_name", "app", "bytes", "pulls", "requests"]
    row_b = next(x for x in rows if x[0] == b["id"])
    assert row_b[1] == "'" + FORMULA_NAME and row_b[3] == str(sizes["b"])  # defused, and the quotes round-trip
    _, rows = await _csv(vendor_env, "/egress", {"customer": a["id"]}, accept="text/csv")
    assert rows == [["day", "bytes", "pulls", "requests"], [today, str(sizes["a"]), "1", "2"]]
    r, rows = await _csv(vendor_env, "/pull_logs", {"customer": b["id"]}, accept="text/csv, application/json")
    assert r.status == 200 and rows[0][:3] == ["time", "customer_id", "customer_name"]
    assert {x[2] for x in rows[1:]} == {"'" + FORMULA_NAME} and [x[5] for x in rows[1:]] == ["manifest"]
    _, rows = await _csv(vendor_env, "/pull_logs", {"customer": a["id"], "format": "csv"})
    assert [x[5] for x in rows[1:]] == ["manifest", "blob"]  # oldest first
    assert [x[0] for x in rows[1:]] == sorted(x[0] for x in rows[1:])
    _, rows = await _csv(vendor_env, "/pull_logs", {"customer": a["id"], "format": "csv", "limit": "1"})
    assert len(rows) == 2
    r, _ = await _csv(vendor_env, "/pull_logs", {"format": "csv", "since": "nope"})
    assert r.status == 400 and r.headers["Content-Type"].startswith("application/json")
    assert (await api.call("GET", "/pull_logs", params={"format": "json", "customer": a["id"]})).status == 200

    # The CLI: the same numbers, as a table, JSON and CSV.
    out = run(vendor_env, "egress", "--customer", a["id"], "--group-by", "image").stdout
    assert "vendor/oci" in out and str(sizes["a"]) in out and "TOTAL" in out
    report = json.loads(run(vendor_env, "egress", "--customer", a["id"], "-o", "json").stdout)
    assert report["totals"]["bytes"] == sizes["a"]
    out = run(vendor_env, "egress", "--group-by", "customer", "--csv").stdout
    assert "'" + FORMULA_NAME.replace('"', '""') in out
    out = run(vendor_env, "logs", "--customer", a["id"], "-o", "csv").stdout
    assert out.splitlines()[0].startswith("time,customer_id") and len(out.splitlines()) == 3
    out = run(vendor_env, "egress", "threshold", a["id"], "1GiB").stdout
    assert "threshold 1.0 GiB a month" in out
    status = json.loads(run(vendor_env, "egress", "status", a["id"], "-o", "json").stdout)
    assert (status["bytes"], status["thresholdBytes"], status["reached"]) == (sizes["a"], 1024**3, False)
    run(vendor_env, "egress", "threshold", a["id"], "none")
    assert (await api.call("GET", f"/customer/{a['id']}/egress")).body["egress"]["thresholdBytes"] is None
    failed = run(vendor_env, "egress", "threshold", a["id"], "lots", check=False)
    assert failed.returncode == 1 and "not a size" in failed.stderr
