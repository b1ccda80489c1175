"""The web portal in a real browser: Playwright driving Debian's Chromium against a
running pullgate, with skopeo pulling through the proxy as a customer would.

Screenshots of every page go to $PULLGATE_ARTIFACTS (default: a temp dir; CI
keeps them in .cache/artifacts/portal/); a failing step saves one too. Missing
Chromium or Playwright skips locally and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tests.support import skopeo
from tests.support.capture import CaptureServer
from tests.support.ci import unavailable
from tests.support.dns_server import LoopbackDNS
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium; scripts/test.sh does it as root)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if missing:
        message = "portal browser tests need " + " and ".join(missing)
        unavailable(message)


@dataclass
class PortalEnv:
    server: Pullgate
    tokens: dict[str, str]
    basic: Registry
    globex_license: str
    dns: LoopbackDNS
    canaries: list[str] = field(default_factory=list)

    @property
    def admin(self) -> str:
        return self.server.admin_url


@pytest.fixture(scope="module")
def portal_env(tmp_path_factory: pytest.TempPathFactory, upstream_basic: Registry) -> Iterator[PortalEnv]:
    _require_browser()
    tokens = {"acme": "pgt_acme_" + secrets.token_hex(16), "globex": "pgt_globex_" + secrets.token_hex(16)}
    env = {
        "PT_ACME": tokens["acme"],
        "PT_GLOBEX": tokens["globex"],
        "PT_BASIC_PW": upstream_basic.password or "",
        "PT_LIC_ACME": "lic-acme-" + secrets.token_hex(16),
        "PT_LIC_GLOBEX": "lic-globex-" + secrets.token_hex(16),
    }
    teams = [
        {
            "name": "acme",
            "api_tokens": [{"token_env": "PT_ACME"}],
            "apps": [{"slug": "acme-app", "name": "Acme App"}, {"slug": "acme-tools"}],
            "customers": [{"name": "Acme Seed Customer", "app": "acme-app", "license_id_env": "PT_LIC_ACME"}],
        },
        {
            "name": "globex",
            "api_tokens": [{"token_env": "PT_GLOBEX"}],
            "apps": [{"slug": "globex-app"}],
            "registries": [
                {
                    "slug": "globex-private",
                    "provider": "other",
                    "endpoint": "registry.globex.test",
                    "url": upstream_basic.url,
                    "insecure": True,
                    "username": "vendor",
                    "password_env": "PT_BASIC_PW",
                }
            ],
            "customers": [{"name": "Globex Hidden Customer", "app": "globex-app", "license_id_env": "PT_LIC_GLOBEX"}],
        },
    ]
    # Hostname ownership checks ask a DNS server of the test's own, on loopback.
    dns = LoopbackDNS()
    settings = {
        "pulllog": {"flush_seconds": 0.05},
        "domains": {"resolver": [dns.nameserver]},
        "cache": {"backend": "filesystem"},  # the Images page shows its size and hit ratio
    }
    try:
        server = Pullgate(
            tmp_path_factory.mktemp("portal"), teams, env=env, settings=settings, name="pullgate-portal"
        ).start()
        try:
            # The password, and globex's license (acme must never see it).
            yield PortalEnv(
                server,
                tokens,
                upstream_basic,
                env["PT_LIC_GLOBEX"],
                dns,
                canaries=[upstream_basic.password or "", env["PT_LIC_GLOBEX"]],
            )
        finally:
            server.stop()
    finally:
        dns.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("PULLGATE_ARTIFACTS")
    d = Path(configured) if configured else tmp_path_factory.mktemp("portal") / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.png"):  # a stale FAILED shot from an earlier run would mislead
        old.unlink()
    return d


@pytest.fixture(scope="module")
async def browser(portal_env: PortalEnv) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    # launch() gives every run a fresh, throw-away user-data-dir of its own.
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


class Portal:
    """One browser context (one cookie jar) on the portal, recording every page's HTML."""

    def __init__(self, env: PortalEnv, context: Any, page: Any, artifacts: Path, prefix: str) -> None:
        self.env, self.context, self.page, self.artifacts, self.prefix = env, context, page, artifacts, prefix
        self.html: list[tuple[str, str]] = []
        self.shots = 0

    def url(self, path: str) -> str:
        return f"{self.env.admin}/portal{path}"

    async def record(self, where: str) -> str:
        html = await self.page.content()
        self.html.append((where, html))
        return html

    async def goto(self, path: str) -> Any:
        resp = await self.page.goto(self.url(path))
        await self.record(path)
        return resp

    async def shot(self, name: str) -> Path:
        self.shots += 1
        path = self.artifacts / f"{self.prefix}-{self.shots:02d}-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        await self.record(name)
        return path

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        """A failing step leaves a screenshot of where the browser was."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                failed = self.artifacts / f"{self.prefix}-FAILED-{name}.png"
                await self.page.screenshot(path=str(failed), full_page=True)
            raise

    async def login(self, token: str) -> None:
        await self.goto("/login")
        await self.page.fill("#token", token)
        await self.page.click("button[type=submit]")
        await self.record("after login")

    async def submit(self, form_selector: str) -> None:
        await self.page.click(f"{form_selector} button[type=submit]")
        await self.record(f"submit {form_selector}")

    async def csrf(self) -> str:
        return await self.page.get_attribute("input[name=csrf]", "value")

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        for where, html in self.html:
            for canary in self.env.canaries:
                if canary not in allow:
                    assert canary not in html, f"a secret is in the HTML of {where}"


@pytest.fixture
async def portal(browser: Any, portal_env: PortalEnv, artifacts: Path, request: pytest.FixtureRequest):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    p = Portal(portal_env, context, page, artifacts, request.node.name.removeprefix("test_"))
    try:
        yield p
    finally:
        p.assert_clean()
        await context.close()


async def _second(browser: Any, portal_env: PortalEnv, artifacts: Path, prefix: str) -> Portal:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    return Portal(portal_env, context, page, artifacts, prefix)


def _pull(env: PortalEnv, ref: str, license_id: str, dest: Path) -> Any:
    return skopeo.copy(f"docker://{env.server.host}/{ref}", dest, creds=f"LICENSE_ID:{license_id}", timeout=60)


# --- the whole vendor workflow ---------------------------------------------------------


async def test_portal_end_to_end(portal: Portal, portal_env: PortalEnv, tmp_path: Path):
    page, env = portal.page, portal_env
    up = env.basic

    async with portal.step("login"):
        await page.goto(env.admin + "/")
        assert page.url.endswith("/portal/login")
        await portal.shot("login")
        await portal.login(env.tokens["acme"])
        assert page.url.endswith("/portal/images")
        cookies = {c["name"]: c for c in await portal.context.cookies()}
        session = cookies["pullgate_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert session["secure"] is False  # plain-HTTP admin listener; Secure when over TLS
        assert env.tokens["acme"] not in session["value"]
        await portal.shot("images-empty")

    async with portal.step("add-registry-wrong-password"):
        await page.click("nav.tabs >> text=Other Registry")
        assert "provider=other" in page.url
        wrong = "canary-wrong-pw-" + secrets.token_hex(6)
        env.canaries.append(wrong)
        await page.fill("#f-endpoint", "portal-basic.test")
        await page.fill("#f-url", up.url)
        await page.check("input[name=insecure]")
        await page.fill("#f-username", up.username or "")
        await page.fill("#f-password", wrong)
        await page.fill("#f-slug", "portal-basic")
        await portal.submit("#add form")
        assert "registry test failed" in await page.inner_text(".problems")
        # The refused form comes back with what was typed, except the secret.
        assert await page.input_value("#f-endpoint") == "portal-basic.test"
        assert await page.input_value("#f-password") == ""
        await portal.shot("add-registry-refused")

    async with portal.step("add-registry"):
        await page.fill("#f-password", up.password or "")
        await page.fill("#f-image", "vendor/oci:v1")
        await portal.submit("#add form")
        assert "Added external registry portal-basic" in await page.inner_text(".flash")
        row = page.locator("#registries tr[data-slug=portal-basic]")
        assert "other" in await row.inner_text() and "password" in await row.inner_text()
        refs = await page.inner_text("ul.refs")
        assert f"{env.server.host}/proxy/acme-app/portal-basic/<repo>:<tag>" in refs
        # The cluster mirror snippets for the team (containerd hosts.toml, registries.conf).
        toml = await page.locator("#mirrors-acme-app pre.hosts-toml[data-registry=portal-basic]").text_content()
        assert toml is not None and toml.startswith("# /etc/containerd/certs.d/portal-basic.test/hosts.toml"), toml
        assert (
            f'[host."https://{env.server.host}/v2/proxy/acme-app/portal-basic"]' in toml
            and "override_path = true" in toml
        )
        default = await page.locator("#mirrors-acme-app pre.hosts-toml-default").text_content()
        assert default is not None and f'[host."https://{env.server.host}/v2/proxy/acme-app"]' in default, default
        conf = await page.locator("#mirrors-acme-app pre.registries-conf[data-registry=portal-basic]").text_content()
        assert conf is not None and f'location = "{env.server.host}/proxy/acme-app/portal-basic"' in conf, conf
        await portal.shot("images")

    async with portal.step("test-registry"):
        await row.get_by_role("link", name="Test", exact=True).click()
        assert await page.input_value("#test-slug") == "portal-basic"
        await page.fill("#test-image", "vendor/oci:v1")
        await portal.submit("#test form")
        assert await page.inner_text("#test-result .status") == "200"
        await portal.shot("registry-test-200")
        await page.fill("#test-image", "vendor/nope:v1")
        await portal.submit("#test form")
        assert await page.inner_text("#test-result .status") == "404"
        assert "MANIFEST_UNKNOWN" in await page.inner_text("#test-result")

    async with portal.step("rotate-credentials"):
        await portal.goto("/images/portal-basic")
        assert await page.input_value("#f-username") == "vendor"
        await page.fill("#f-password", up.password or "")
        await page.fill("#f-image", "vendor/oci:v1")
        await portal.shot("registry-rotate")
        await portal.submit("form.grid")
        assert "Updated external registry portal-basic" in await page.inner_text(".flash")

    async with portal.step("create-customer"):
        await page.click("header nav >> text=Customers")
        await page.fill("#c-name", "Portal Customer")
        await page.fill("#c-email", "ops@portal.test")
        await page.select_option("#c-app", "acme-app")
        await page.fill("#c-exp", "2099-01-31")
        await page.select_option("#c-channel", "Beta")
        await page.fill("#c-custom", "crm-portal")
        await portal.submit("form[action$='/customers']")
        assert re.search(r"/portal/customers/[0-9a-f]{32}$", page.url), page.url
        license_id = (await page.inner_text("#license-id")).strip()
        assert len(license_id) >= 32
        assert await page.inner_text("#status") == "active"
        facts = await page.inner_text("dl.facts")
        assert "2099-01-31" in facts and "crm-portal" in facts
        assert " ".join((await page.inner_text("#channels")).split()) == "Beta (default)"
        customer_url = page.url
        await portal.shot("customer")
        # Channels changed on the customer's page: Stable added and made the default.
        await page.check("form[action$='/channels'] input[type=checkbox] >> nth=0")
        await page.check("form[action$='/channels'] input[type=radio] >> nth=0")
        await portal.submit("form[action$='/channels']")
        assert "Channels saved." in await page.inner_text(".flash")
        assert " ".join((await page.inner_text("#channels")).split()) == "Stable (default), Beta"
        await portal.goto("/customers")
        assert "Portal Customer" in await page.inner_text("#customers")
        assert "Stable, Beta" in await page.inner_text("#customers")
        assert license_id not in await page.content()  # only on the customer's own page
        await portal.shot("customers")

    async with portal.step("pull"):
        ref = "proxy/acme-app/portal-basic/vendor/oci:v1"
        done = await asyncio.to_thread(_pull, env, ref, license_id, tmp_path / "first")
        assert done.returncode == 0, done.stderr

    async with portal.step("pull-log"):
        customer_id = customer_url.rsplit("/", 1)[1]
        for _ in range(50):  # written in the background, every 50 ms: the manifest's row and the blobs'
            await portal.goto(f"/logs?customer={customer_id}&registry=portal-basic")
            table = await page.inner_text("#logs")
            if "manifest" in table and "blob" in table:
                break
            await asyncio.sleep(0.1)
        assert "Portal Customer" in table and "manifest" in table and "blob" in table
        assert "miss" in table  # the cache's mark: the first pull went upstream
        await portal.shot("pull-logs")
        await portal.goto("/images")
        assert await page.inner_text("#cache .cache-size") != "0 B"
        assert await page.inner_text("#cache .cache-ratio") == "0.0 %"  # misses only, so far
        await portal.goto("/logs?since=2000-01-01T00:00&until=2000-01-02T00:00")
        assert "No pulls match" in await page.inner_text("main")

    async with portal.step("revoke"):
        await page.goto(customer_url)
        await portal.submit("form[action$='/revoke']")
        assert await page.inner_text("#status") == "revoked"
        await portal.shot("customer-revoked")
        refused = await asyncio.to_thread(_pull, env, ref, license_id, tmp_path / "second")
        assert refused.returncode != 0
        assert re.search(r"401|unauthorized", refused.stderr, re.I), refused.stderr

    async with portal.step("apps"):
        await page.click("header nav >> text=Apps")
        await page.fill("#al-acme-tools", "tools/*\nvendor/cli")
        await portal.submit("#app-acme-tools form")
        assert "Saved the image allowlist of acme-tools" in await page.inner_text(".flash")
        assert await page.input_value("#al-acme-tools") == "tools/*\nvendor/cli"
        await page.fill("#a-slug", "portal-new-app")
        await portal.submit("form[action$='/apps']")
        assert "Created app portal-new-app" in await page.inner_text(".flash")
        await portal.shot("apps")

    async with portal.step("logout"):
        stale = await portal.context.cookies()
        await page.click("header button:has-text('Log out')")
        assert page.url.endswith("/portal/login")
        # The logged-out cookie, replayed, opens nothing.
        await portal.context.add_cookies([c for c in stale if c["name"] == "pullgate_session"])
        await portal.goto("/customers")
        assert page.url.endswith("/portal/login")


# --- refusals ------------------------------------------------------------------------------


async def test_bad_token_refused(portal: Portal, portal_env: PortalEnv):
    await portal.login("pgt_not_a_real_token")
    assert portal.page.url.endswith("/portal/login")
    assert "not valid" in await portal.page.inner_text(".flash.error")
    await portal.shot("bad-token")
    assert "pullgate_session" not in {c["name"] for c in await portal.context.cookies()}
    resp = await portal.goto("/customers")
    assert portal.page.url.endswith("/portal/login") and resp.ok


async def test_post_without_or_with_wrong_csrf_token_is_refused(portal: Portal, portal_env: PortalEnv):
    await portal.login(portal_env.tokens["acme"])
    await portal.goto("/apps")
    good = await portal.csrf()
    req = portal.context.request  # shares the browser context's cookies
    wrong = secrets.token_urlsafe(24)
    for form in ({"slug": "csrf-none"}, {"slug": "csrf-wrong", "csrf": wrong}, {"slug": "csrf-empty", "csrf": ""}):
        resp = await req.post(portal.url("/apps"), form=form, max_redirects=0)
        assert resp.status == 403, form
        assert "security token" in await resp.text()
    # A login form needs its own token too.
    resp = await req.post(portal.url("/login"), form={"token": portal_env.tokens["acme"]}, max_redirects=0)
    assert resp.status == 403
    # The same request with the session's token goes through: the refusals were the token's doing.
    resp = await req.post(portal.url("/apps"), form={"slug": "csrf-ok", "csrf": good}, max_redirects=0)
    assert resp.status == 303
    await portal.goto("/apps")
    html = await portal.page.content()
    assert "csrf-ok" in html and "csrf-none" not in html and "csrf-wrong" not in html and "csrf-empty" not in html
    # Without a session a POST is refused before anything else.
    async with aiohttp.ClientSession() as s, s.post(portal.url("/apps"), data={"slug": "nosession"}) as r:
        assert r.status == 403


async def test_a_team_sees_only_its_own_data(portal: Portal, portal_env: PortalEnv, browser: Any, artifacts: Path):
    env = portal_env
    async with aiohttp.ClientSession(headers={"Authorization": env.tokens["globex"]}) as s:
        async with s.get(env.admin + "/vendor/v3/customers") as r:
            globex_customer = (await r.json())["customers"][0]["id"]
    await portal.login(env.tokens["acme"])
    for path in ("/images", "/customers", "/logs", "/apps"):
        await portal.goto(path)
        html = await portal.page.content()
        foreigners = ("globex-private", "registry.globex.test", "Globex Hidden Customer", "globex-app", globex_customer)
        for foreign in foreigners:
            assert foreign not in html, (path, foreign)
    await portal.shot("acme-customers")
    for path in (f"/customers/{globex_customer}", "/images/globex-private"):
        resp = await portal.goto(path)
        assert resp.status == 404, path
    csrf = await portal.csrf()
    req = portal.context.request
    for path in (f"/customers/{globex_customer}/revoke", "/images/globex-private/remove", "/apps/globex-app"):
        resp = await req.post(portal.url(path), form={"csrf": csrf, "allowlist": "x/*"}, max_redirects=0)
        assert resp.status == 404, path
    # The other way round, in a second browser context.
    globex = await _second(browser, env, artifacts, "globex")
    try:
        await globex.login(env.tokens["globex"])
        await globex.goto("/customers")
        html = await globex.page.content()
        assert "Globex Hidden Customer" in html and "Acme Seed Customer" not in html
        assert (await globex.page.inner_text(".top .team")) == "globex"
        await globex.goto("/images")
        assert "globex-private" in await globex.page.inner_text("#registries")
        await globex.goto(f"/customers/{globex_customer}")
        assert await globex.page.inner_text("#status") == "active"  # acme's revoke did nothing
        await globex.shot("images")
        globex.assert_clean(allow=(env.globex_license,))  # its own page shows its own license
    finally:
        await globex.context.close()


async def test_edit_form_never_sends_the_stored_secret_to_a_new_url(portal: Portal, portal_env: PortalEnv):
    """Hole 3 through the portal: a new URL on the edit form needs the password typed again."""
    page, env, up = portal.page, portal_env, portal_env.basic
    where = {"provider": "other", "endpoint": "replay.portal.test", "slug": "portal-replay", "url": up.url}
    reg = {**where, "insecure": True, "username": up.username, "password": up.password, "image": "vendor/oci:v1"}
    async with aiohttp.ClientSession(env.admin + "/vendor/v3/", headers={"Authorization": env.tokens["acme"]}) as api:
        async with api.post("external_registry", json=reg) as r:
            assert r.status == 201, await r.text()
        await portal.login(env.tokens["acme"])
        with CaptureServer() as trap:
            async with portal.step("move-without-secret"):
                await portal.goto("/images/portal-replay")
                assert await page.input_value("#f-url") == up.url
                assert await page.is_checked("input[name=insecure]")
                await page.fill("#f-url", trap.url)
                await page.fill("#f-image", "vendor/oci:v1")
                async with page.expect_navigation():
                    await page.click("form.grid button[type=submit]")
                await portal.record("move refused")
                assert trap.credentials == [], "the stored password was sent to the new url"
                problems = await page.inner_text(".field.invalid .problems")
                assert "url: changing where the registry is reached requires giving the secret again" in problems
                # What was typed comes back, the secret never does.
                assert await page.input_value("#f-url") == trap.url
                assert await page.input_value("#f-image") == "vendor/oci:v1"
                assert await page.input_value("#f-username") == up.username
                assert await page.input_value("#f-password") == ""
                await portal.shot("registry-move-refused")
                await page.check("input[name=skipValidation]")
                await portal.submit("form.grid")
                assert "requires giving the secret again" in await page.inner_text(".problems")
                assert trap.seen == []
            async with api.get("external_registry/portal-replay") as r:
                assert (await r.json())["external_registry"]["url"] == up.url
            async with portal.step("move-with-secret"):
                await page.fill("#f-password", "typed-for-the-trap")
                await page.check("input[name=skipValidation]")
                await portal.submit("form.grid")
                assert "Updated external registry portal-replay" in await page.inner_text(".flash")
            async with api.get("external_registry/portal-replay") as r:
                assert (await r.json())["external_registry"]["url"] == trap.url
        async with api.delete("external_registry/portal-replay") as r:
            assert r.status == 204


# --- custom hostnames ------------------------------------------------------------------------

PORTAL_HOST = "images.acme-portal.test"


async def _click_and_load(portal: Portal, locator: Any, what: str) -> None:
    async with portal.page.expect_navigation():
        await locator.click()
    await portal.record(what)


def _pems(leaf: trustme.LeafCert) -> tuple[str, str]:
    return leaf.cert_chain_pems[0].bytes().decode(), leaf.private_key_pem.bytes().decode()


async def test_custom_hostnames(portal: Portal, portal_env: PortalEnv, browser: Any, artifacts: Path, tmp_path: Path):
    page, env = portal.page, portal_env
    ca = trustme.CA()
    card = page.locator(f"section.hostname[data-hostname='{PORTAL_HOST}']")
    # A registry serving acme-app, so the Images page has pull references to show.
    api = aiohttp.ClientSession(env.admin + "/vendor/v3/", headers={"Authorization": env.tokens["acme"]})
    reg = {"provider": "other", "endpoint": "hostnames-reg.test", "slug": "hostnames-reg", "skipValidation": True}
    async with api, api.post("external_registry", json=reg) as r:
        assert r.status == 201, await r.text()
    await portal.login(env.tokens["acme"])

    async with portal.step("add"):
        await page.click("header nav >> text=Hostnames")
        assert page.url.endswith("/portal/hostnames")
        assert "No custom hostname yet" in await page.inner_text("main")
        assert await page.inner_text("#pull-host") == env.server.host
        await page.fill("#h-name", "not a hostname!")
        await portal.submit("#add form")
        assert "hostname" in await page.inner_text("#add .problems")
        assert await page.input_value("#h-name") == "not a hostname!"
        # A name under the operator's own proxy.hosts (localhost:<port>) is no team's to claim.
        await page.fill("#h-name", "images.localhost")
        await portal.submit("#add form")
        assert "reserved by the operator" in await page.inner_text("#add .problems")
        assert await page.input_value("#h-name") == "images.localhost"
        await page.fill("#h-name", PORTAL_HOST)
        await portal.submit("#add form")
        assert f"Added {PORTAL_HOST}" in await page.inner_text(".flash")
        assert await card.locator("[data-role=status]").inner_text() == "pending"
        assert await card.locator("[data-role=dns-record]").inner_text() == f"_pullgate-challenge.{PORTAL_HOST}"
        token = (await card.locator("[data-role=dns-value]").inner_text()).strip()
        assert len(token) >= 20
        # The HTTP challenge is off on this server (domains.http_challenge): not offered.
        assert await card.locator("[data-role=http-url]").count() == 0
        assert "HTTP challenge" not in await page.inner_text("main")
        assert "None uploaded" in await card.locator("[data-role=certificate]").inner_text()
        await portal.shot("hostname-pending")

    async with portal.step("verify-without-record"):
        await _click_and_load(portal, card.locator("button:has-text('Verify')"), "verify (no record)")
        assert f"Verification of {PORTAL_HOST} failed" in await page.inner_text(".flash.error")
        assert await card.locator("[data-role=status]").inner_text() == "failed"
        reason = await card.locator("[data-role=reason]").inner_text()
        assert f"_pullgate-challenge.{PORTAL_HOST}" in reason and "TXT" in reason, reason
        # Not verified: it cannot be the default yet.
        assert await card.locator("button:has-text('Make default')").count() == 0
        await portal.shot("hostname-failed")

    async with portal.step("verify"):
        env.dns.txt[f"_pullgate-challenge.{PORTAL_HOST}"] = [token]
        await _click_and_load(portal, card.locator("button:has-text('Verify')"), "verify")
        assert f"{PORTAL_HOST} is verified" in await page.inner_text(".flash")
        assert await card.locator("[data-role=status]").inner_text() == "verified"
        assert await card.locator("[data-role=reason]").count() == 0

    async with portal.step("default"):
        await _click_and_load(portal, card.locator("button:has-text('Make default')"), "make default")
        assert "now the default" in await page.inner_text(".flash")
        assert await card.locator("[data-role=default]").inner_text() == "default"
        assert await page.inner_text("#pull-host") == PORTAL_HOST
        await page.click("header nav >> text=Images")
        await portal.record("images with the default hostname")
        refs = await page.inner_text("ul.refs")
        assert f"{PORTAL_HOST}/proxy/acme-app/hostnames-reg/<repo>:<tag>" in refs and env.server.host not in refs, refs
        await portal.shot("images-default-hostname")

    async with portal.step("certificate-refused"):
        await page.click("header nav >> text=Hostnames")
        other_cert, other_key = _pems(ca.issue_cert("elsewhere.acme-portal.test"))
        env.canaries.append(other_key.splitlines()[1])
        await card.locator("details.upload summary").click()
        await card.locator("textarea[name=certificate]").fill(other_cert)
        await card.locator("textarea[name=key]").fill(other_key)
        await _click_and_load(portal, card.locator("button:has-text('Save certificate')"), "certificate refused")
        assert f"does not name {PORTAL_HOST}" in await card.locator(".problems").inner_text()
        # The (public) certificate comes back for correction; the key never does.
        assert await card.locator("textarea[name=certificate]").input_value() == other_cert.strip()
        assert await card.locator("textarea[name=key]").input_value() == ""
        assert other_key.splitlines()[1] not in await page.content()
        await portal.shot("certificate-refused")

    async with portal.step("certificate"):
        cert, key = _pems(ca.issue_cert(PORTAL_HOST))
        env.canaries.append(key.splitlines()[1])
        await card.locator("textarea[name=certificate]").fill(cert)
        await card.locator("textarea[name=key]").fill(key)
        await _click_and_load(portal, card.locator("button:has-text('Save certificate')"), "certificate")
        assert f"Certificate for {PORTAL_HOST} saved" in await page.inner_text(".flash")
        cell = await card.locator("[data-role=certificate]").inner_text()
        assert "Valid until" in cell and await card.locator("[data-role=cert-flag]").count() == 0, cell

    async with portal.step("certificate-expiring"):
        # A certificate ending within 21 days, uploaded as files this time.
        not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=10, hours=1)
        soon_cert, soon_key = _pems(ca.issue_cert(PORTAL_HOST, not_after=not_after))
        env.canaries.append(soon_key.splitlines()[1])
        (tmp_path / "soon.crt").write_text(soon_cert)
        (tmp_path / "soon.key").write_text(soon_key)
        await card.locator("details.upload summary").click()
        await card.locator("input[name=certificateFile]").set_input_files(str(tmp_path / "soon.crt"))
        await card.locator("input[name=keyFile]").set_input_files(str(tmp_path / "soon.key"))
        await _click_and_load(portal, card.locator("button:has-text('Save certificate')"), "certificate expiring")
        assert f"Certificate for {PORTAL_HOST} saved" in await page.inner_text(".flash")
        assert await card.locator("[data-role=cert-flag]").inner_text() == "Expires soon"
        cell = await card.locator("[data-role=certificate]").inner_text()
        assert not_after.strftime("%Y-%m-%d") in cell and "in 10 days" in cell, cell
        await portal.shot("hostname-expiring")

    async with portal.step("other-team"):
        globex = await _second(browser, env, artifacts, "globex-hostnames")
        try:
            await globex.login(env.tokens["globex"])
            await globex.goto("/hostnames")
            assert PORTAL_HOST not in await globex.page.content()
            assert await globex.page.inner_text("#pull-host") == env.server.host
            await globex.goto("/images")
            assert PORTAL_HOST not in await globex.page.content()
            csrf = await globex.csrf()
            for action in ("verify", "default", "certificate", "remove"):
                resp = await globex.context.request.post(
                    globex.url(f"/hostnames/{PORTAL_HOST}/{action}"), form={"csrf": csrf}, max_redirects=0
                )
                assert resp.status == 404, action
            globex.assert_clean()
        finally:
            await globex.context.close()
        await portal.goto("/hostnames")
        assert await card.locator("[data-role=status]").inner_text() == "verified"  # globex changed nothing

    async with portal.step("remove"):
        await _click_and_load(portal, card.locator("button:has-text('Remove')"), "remove")
        assert f"Removed {PORTAL_HOST}" in await page.inner_text(".flash")
        assert await card.count() == 0
        assert await page.inner_text("#pull-host") == env.server.host
        await portal.goto("/images")
        refs = await page.inner_text("ul.refs")
        assert PORTAL_HOST not in refs and f"{env.server.host}/proxy/acme-app/hostnames-reg/" in refs, refs
        await _click_and_load(portal, page.locator("tr[data-slug=hostnames-reg] button:has-text('Remove')"), "cleanup")
