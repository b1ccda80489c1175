"""The portal's egress pictures in a real browser (Playwright driving Debian's Chromium,
with JavaScript off: the charts are server-drawn SVG): the Insights page, a customer's
egress, threshold and notification, the Webhook page and its deliveries, and the CSV
downloads. Screenshots go to $PULLGATE_ARTIFACTS (see test_portal.py)."""

from __future__ import annotations

import base64
import csv
import io
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_portal import (  # noqa: F401 - fixtures shared with the portal tests
    Portal,
    PortalEnv,
    artifacts,
    browser,
    portal_env,
)
from tests.support.poll import apoll
from tests.support.webhook_receiver import WebhookReceiver

OCI = "application/vnd.oci.image.manifest.v1+json"
SECRET = "whsec-portal-" + secrets.token_hex(6)


@pytest.fixture
async def portal(browser: Any, portal_env: PortalEnv, artifacts: Path, request: pytest.FixtureRequest):  # noqa: F811
    # JavaScript off: every picture and form must work without it.
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    p = Portal(portal_env, context, page, artifacts, request.node.name.removeprefix("test_"))
    try:
        yield p
    finally:
        p.assert_clean()
        await context.close()


@pytest.fixture
def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    yield r
    r.stop()


async def _api(env: PortalEnv, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": env.tokens["globex"]}) as s:
        async with s.request(method, f"{env.admin}/vendor/v3{path}", json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()


async def _pull(env: PortalEnv, license_id: str, what: str) -> int:
    img = env.basic.images["oci"]
    base = "/v2/proxy/globex-app/globex-private/vendor/oci"
    path = f"{base}/manifests/v1" if what == "manifest" else f"{base}/blobs/{img.blobs[-1][0]}"
    auth = "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(env.server.url + path, headers={"Authorization": auth, "Accept": OCI}) as r:
            body = await r.read()
            assert r.status == 200
            return len(body)


async def test_insights_customer_egress_and_webhook(
    portal: Portal,
    portal_env: PortalEnv,  # noqa: F811 - the fixture imported above
    receiver: WebhookReceiver,
):
    page, env = portal.page, portal_env
    made = (await _api(env, "POST", "/customer", {"name": "Insight Customer", "appSlug": "globex-app"}))["customer"]
    cid, lic = made["id"], made["licenseId"]
    served = await _pull(env, lic, "manifest") + await _pull(env, lic, "blob")

    async def rolled_up() -> bool:
        state = (await _api(env, "GET", f"/customer/{cid}/egress"))["egress"]
        return bool(state["bytes"] == served)

    await apoll(rolled_up, 10, "the pulls in the rollup")
    await portal.login(env.tokens["globex"])

    async with portal.step("insights"):
        resp = await portal.goto("/insights")
        assert resp.status == 200
        charts = page.locator("svg.chart")
        assert await charts.count() >= 5  # egress, pulls, top customers, top images, cache gauge
        egress_bars = page.locator("#egress-per-day svg rect.bar")
        assert await egress_bars.count() == 30  # a bar per day, empty days included
        titles = await page.locator("#egress-per-day svg rect.bar title").all_text_contents()
        assert any(t.endswith(("KiB", " B", "MiB")) and not t.endswith(": 0 B") for t in titles)
        top = await page.locator("#top-customers svg a text").all_text_contents()
        assert "Insight Customer" in top
        assert "vendor/oci" in " ".join(await page.locator("#top-images svg text").all_text_contents())
        # The cache panel reads the pull log's hit/miss column: no cache here, so "no data".
        assert "no data" in await page.locator("#cache svg").inner_html()
        await portal.shot("insights")
        await page.click("nav.tabs >> text=Last 7 days")
        assert await page.locator("#egress-per-day svg rect.bar").count() == 7

    async with portal.step("csv-downloads"):
        await portal.goto("/insights")
        href = await page.get_attribute("#downloads a:has-text('Per customer')", "href")
        r = await portal.context.request.get(env.admin + href)
        assert r.status == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(await r.text())))
        assert rows[0][:3] == ["customer_id", "customer_name", "app"]
        assert [cid, "Insight Customer", "globex-app", str(served)] in [x[:4] for x in rows]
        await portal.goto(f"/logs?customer={cid}")
        href = await page.get_attribute("#logs-csv", "href")
        r = await portal.context.request.get(env.admin + href)
        logs = list(csv.reader(io.StringIO(await r.text())))
        assert [x[5] for x in logs[1:]] == ["manifest", "blob"]

    async with portal.step("webhook-refused-then-set"):
        await portal.goto("/webhook")
        await page.fill("#w-url", "http://169.254.169.254/latest")
        await page.fill("#w-secret", SECRET)
        await portal.submit("form[action$='/webhook']")
        assert "rule link-local" in await page.locator(".problems").inner_text()
        await portal.shot("webhook-refused")
        await page.fill("#w-url", receiver.url)
        await page.fill("#w-secret", SECRET)
        await portal.submit("form[action$='/webhook']")
        assert "Webhook saved." in await page.locator(".flash").inner_text()
        assert "set (never shown)" in await page.locator("#webhook-secret").inner_text()

    async with portal.step("threshold-crossed"):
        await portal.goto(f"/customers/{cid}")
        assert await page.locator("#egress svg.chart").count() >= 3
        await page.fill("#th-amount", "0.0001")
        await page.select_option("#th-unit", "MiB")  # 104 bytes: already passed; the next pull tells
        await portal.submit(f"form[action$='/customers/{cid}/threshold']")
        assert "Egress threshold saved." in await page.locator(".flash").inner_text()
        assert await page.locator("#threshold-state").inner_text() == "reached"
        await _pull(env, lic, "manifest")
        await apoll(lambda: len(receiver.accepted()) == 1, 15, "the webhook delivery")
        assert receiver.accepted()[0].valid and receiver.accepted()[0].event["customerId"] == cid
        await portal.goto(f"/customers/{cid}")
        assert "delivered" in await page.locator("#notification").inner_text()
        await portal.shot("customer-egress")
        await portal.goto("/webhook")
        assert await page.locator("#deliveries tbody tr").count() == 1
        assert "delivered" in await page.locator("#deliveries").inner_text()
        await portal.shot("webhook-deliveries")

    async with portal.step("threshold-bad-input"):
        await portal.goto(f"/customers/{cid}")
        await page.fill("#th-amount", "lots")
        await portal.submit(f"form[action$='/customers/{cid}/threshold']")
        assert "egressThresholdBytes" in await page.locator("#egress .problems").inner_text()
