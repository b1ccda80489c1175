"""The `replicated` vendor CLI against a running pullgate, request by request.

Each request is one of tests/support/replicated_cli.py (declared from the CLI's Go
source), sent as the CLI sends it: under `<admin origin>/vendor` (its
REPLICATED_API_ORIGIN), with the raw token, its headers and Go's JSON encoding. Each
answer must have the status the CLI wants, decode under Go's rules into the struct
the CLI reads (with what the command needs there), and match pullgate's OpenAPI
document; each request body must match the document too. Where the CLI loops
(customer paging, search paging, the channel lookup) the test loops as its Go code
does. After the module, every operation the document tags "replicated CLI" must have
been answered with a success.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.support import replicated_cli as cli
from tests.support.poll import apoll
from tests.support.vendor import VendorClient, VendorEnv, check_request, check_shape, documented_operations

OCI = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module", autouse=True)
def every_cli_operation(vendor_env: VendorEnv, request: pytest.FixtureRequest) -> Iterator[None]:
    """Every operation shaped for the CLI was answered with a success by some test here."""
    outer, vendor_env.exercised = vendor_env.exercised, set()
    failed_before = request.session.testsfailed
    yield
    exercised, vendor_env.exercised = vendor_env.exercised, outer | vendor_env.exercised
    module = request.node
    selected = {item.nodeid for item in request.session.items if item.parent is module}
    if selected != {item.nodeid for item in module.collect()} or request.session.testsfailed > failed_before:
        return
    for method, path in sorted(documented_operations(cli=True)):
        assert any((m, p) == (method, path) and s < 300 for m, p, s in exercised), f"{method} {path}: no success"


class Cli:
    """Sends catalogue requests as the CLI does, for one team."""

    def __init__(self, env: VendorEnv, team: str = "alpha") -> None:
        self.env, self.token = env, env.tokens[team]

    async def send(
        self,
        req: cli.CliRequest,
        want: int | set[int] | None = None,
        shows_license: bool = False,
        valid: bool = True,
        **values: Any,
    ) -> Any:
        """The answer's JSON; asserts the status (`want`, else the one the CLI accepts). A
        `valid` request's body must match the document (an invalid one is sent on purpose)."""
        path, body = req.fill(**values)
        assert path.startswith("/v3/")
        if body is not None and valid:
            check_request(req.method, "/vendor" + path.split("?")[0], body)
        data = None if body is None else (json.dumps(body) + "\n").encode()  # json.Encoder adds a newline
        # The path goes out as the CLI escaped it: no re-quoting by the HTTP client.
        url = self.env.admin + "/vendor" + path
        async with aiohttp.ClientSession() as s:
            async with s.request(req.method, url, data=data, headers=cli.headers(self.token)) as r:
                raw, status, ctype = await r.read(), r.status, r.headers.get("Content-Type", "")
        answer = json.loads(raw) if raw else None
        if not shows_license:
            self.env.assert_clean(raw, f"{req.method} {path}")
        if status < 500:
            self.env.exercised.add(check_shape(req.method, r.url.path, status, answer))
        expected = {req.status} if want is None else want if isinstance(want, set) else {want}
        assert status in expected, (req.command, path, status, answer)
        if status >= 400:
            # What the CLI prints: `message` (404 prints "Not found", but the body still says why).
            assert ctype.startswith("application/json") and isinstance(answer["message"], str) and answer["message"]
        elif req.reads is not None:
            assert cli.decode(req.reads, answer) == [], (req.command, answer)
        return answer

    async def app_id(self, slug_or_id: str) -> str:
        """As every command resolves --app (pkg/kotsclient/app.go GetApp): by id or slug in `app ls`."""
        apps = (await self.send(cli.APP_LS))["apps"]
        return next(a["id"] for a in apps if slug_or_id in (a["id"], a["slug"]))

    async def channel(self, app_id: str, name_or_id: str) -> dict[str, Any]:
        """client/channel.go GetOrCreateChannelByName: the id lookup, on 404 the list, then findChannel."""
        q = quote(name_or_id, safe="")
        got = await self.send(cli.CHANNEL_GET, want={200, 404}, appId=app_id, channel_q=q)
        if "channel" in got:
            return got["channel"]
        listed = (await self.send(cli.CHANNEL_LIST, appId=app_id, channel_q=q))["channels"]
        matching = [c for c in listed if name_or_id in (c["id"], c["name"])]
        assert len(matching) == 1, listed
        return matching[0]

    async def list_customers(self, app_id: str, include_test: bool = False) -> tuple[list[dict[str, Any]], int]:
        """pkg/kotsclient/customer_list.go ListCustomers: pages until totalCustomers or an empty page."""
        req = cli.CUSTOMER_LS_TEST if include_test else cli.CUSTOMER_LS
        every: list[dict[str, Any]] = []
        for page in range(100):
            answer = await self.send(req, appId=app_id, page=page)
            every += answer["customers"]
            if len(every) == answer["totalCustomers"] or not answer["customers"]:
                return every, page + 1
        raise AssertionError("the CLI would still be paging")

    async def by_name(self, app_id: str, name: str) -> dict[str, Any]:
        """customer_list.go GetCustomerByNameOrId: GET by id (a 404 for a name), then
        getCustomerByName: search pages, one exact match, then GET by id."""
        await self.send(cli.CUSTOMER_GET, want=404, customerId=quote(name, safe=""))
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            answer = await self.send(cli.CUSTOMER_SEARCH, appId=app_id, offset=offset, name=name)
            found += answer["customers"]
            offset += 100
            if offset > answer["total_hits"]:
                break
        exact = [c for c in found if c["name"] == name]
        assert len(exact) == 1, found
        return (await self.send(cli.CUSTOMER_GET, shows_license=True, customerId=exact[0]["id"]))["customer"]


@pytest.fixture
def alpha(vendor_env: VendorEnv) -> Cli:
    return Cli(vendor_env, "alpha")


async def test_app_create_derives_the_slug_and_apps_have_channels(alpha: Cli):
    app = (await alpha.send(cli.APP_CREATE, name="Acme CLI Suite"))["app"]
    assert app["slug"] == "acme-cli-suite" and app["name"] == "Acme CLI Suite"
    assert [c["name"] for c in app["channels"]] == ["Stable", "Beta", "Unstable"]
    again = (await alpha.send(cli.APP_CREATE, name="Acme CLI Suite"))["app"]
    assert again["slug"] == "acme-cli-suite-2"  # app slugs are global: the next free one
    apps = (await alpha.send(cli.APP_LS))["apps"]
    assert {"acme-cli-suite", "acme-cli-suite-2", "alpha-app"} <= {a["slug"] for a in apps}
    assert all([c["name"] for c in a["channels"]] == ["Stable", "Beta", "Unstable"] for a in apps)
    assert await alpha.app_id("acme-cli-suite") == app["id"] == await alpha.app_id(app["id"])
    assert (await alpha.send(cli.APP_CREATE, want=400, name="!!!"))["errors"][0].startswith("slug:")


async def test_registry_commands(alpha: Cli, vendor_env: VendorEnv):
    # `registry add other` without --name: the endpoint (host:port) goes as the slug.
    added = await alpha.send(cli.REGISTRY_ADD, endpoint="registry.cli.test:5000", username="u", password="p", skip=True)
    assert added["external_registry"]["slug"] == "registry.cli.test-5000"
    listed = (await alpha.send(cli.REGISTRY_LS))["external_registries"]
    assert "registry.cli.test-5000" in [r["slug"] for r in listed]
    # A registry pullgate can reach (its url given through pullgate's own field), tested and pulled from.
    up = vendor_env.basic
    api = VendorClient(vendor_env, "alpha")
    body = {
        "provider": "other",
        "endpoint": "cli-pulls.example.test",
        "slug": "cli-pulls",
        "url": up.url,
        "insecure": True,
        "username": up.username,
        "password": up.password,
    }
    assert (await api.call("POST", "/external_registry", body)).status == 201
    tested = await alpha.send(cli.REGISTRY_TEST, endpoint="cli-pulls.example.test", image="vendor/oci:v1")
    assert tested["status"] == 200
    customer = (await api.call("POST", "/customer", {"name": "CLI Puller", "appSlug": "alpha-app"})).body["customer"]
    vendor_env.canaries.append(customer["licenseId"])
    auth = "Basic " + base64.b64encode(f"LICENSE_ID:{customer['licenseId']}".encode()).decode()
    async with aiohttp.ClientSession() as s:
        path = "/v2/proxy/alpha-app/cli-pulls/vendor/oci/manifests/v1"
        async with s.get(vendor_env.server.url + path, headers={"Authorization": auth, "Accept": OCI}) as r:
            assert r.status == 200
        async with s.get(vendor_env.server.url + path.replace("v1", "nope"), headers={"Authorization": auth}) as r:
            assert r.status == 404

    async def two_rows() -> list[dict[str, Any]] | None:
        q = quote("cli-pulls.example.test", safe="")
        logs = (await alpha.send(cli.REGISTRY_LOGS, endpoint_q=q))["logs"]
        return logs if len(logs) >= 2 else None

    logs = await apoll(two_rows, timeout=5, what="two pull log rows")
    assert {(row["statusCode"], row["isSuccess"]) for row in logs} == {(200, True), (404, False)}
    assert all(row["createdAt"] == row["time"] and row["image"] == "vendor/oci" for row in logs)
    # `registry rm` escapes its argument: the endpoint with its port finds the derived slug.
    await alpha.send(cli.REGISTRY_RM, slug_q=quote("registry.cli.test:5000", safe=""))
    await alpha.send(cli.REGISTRY_RM, want=404, slug_q="registry.cli.test-5000")
    await alpha.send(cli.REGISTRY_RM, slug_q="cli-pulls")


async def test_customer_create_ls_inspect(alpha: Cli, vendor_env: VendorEnv):
    app_id = await alpha.app_id("alpha-app")
    stable = await alpha.channel(app_id, "Stable")  # by name: a 404, then the list
    assert (stable["name"], stable["channelSlug"], stable["isDefault"]) == ("Stable", "stable", True)
    assert stable["replicatedRegistryDomain"] == vendor_env.server.host
    beta = await alpha.channel(app_id, "Beta")
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=720)).strftime("%Y-%m-%dT%H:%M:%SZ")
    created = (
        await alpha.send(
            cli.CUSTOMER_CREATE,
            shows_license=True,
            name="CLI Trial Co",
            channelId=beta["id"],
            customId="crm-42",
            appId=app_id,
            type="trial",
            expiresAt=expires,
            email="ops@trial.test",
        )
    )["customer"]
    license_id = created["installationId"]
    vendor_env.canaries.append(license_id)
    assert created["type"] == "trial" and created["customId"] == "crm-42" and created["expiresAt"] == expires
    assert [(c["name"], c["isDefaultForCustomer"]) for c in created["channels"]] == [("Beta", True)]
    assert created["licenseId"] == license_id and len(license_id) >= 22

    # `customer ls`: every customer of the app once, never a license ID.
    listed, _ = await alpha.list_customers(app_id)
    assert [c["id"] for c in listed].count(created["id"]) == 1
    assert all("installationId" not in c for c in listed)
    # `customer inspect --customer NAME`: search, exact match, GET by id, its channel, hostnames.
    shown = await alpha.by_name(app_id, "CLI Trial Co")
    assert shown["installationId"] == license_id and shown["channels"][0]["id"] == beta["id"]
    channel = (await alpha.send(cli.CHANNEL_GET, appId=app_id, channel_q=quote(beta["id"], safe="")))["channel"]
    assert channel["name"] == "Beta" and channel["customHostNameOverrides"]["registry"]["hostname"] == ""
    # The registry host it shows: the team's default verified custom hostname (registryHostname).
    host = f"cli-{secrets.token_hex(3)}.alpha.example"
    api = VendorClient(vendor_env, "alpha")
    made = (await api.call("POST", "/custom_hostnames", {"hostname": host})).body["custom_hostname"]
    vendor_env.dns.txt[made["verification"]["dnsRecord"]] = [made["verification"]["dnsValue"]]
    try:
        verified = await api.call("POST", f"/custom_hostname/{host}/verify")
        assert verified.body["custom_hostname"]["status"] == "verified"
        assert (await api.call("POST", f"/custom_hostname/{host}/default")).status == 200
        hosts = (await alpha.send(cli.CUSTOM_HOSTNAMES, appId=app_id))["Body"]
        for kind in ("registry", "proxy"):
            assert [(h["hostname"], h["app_id"]) for h in hosts[kind] if h["is_default"]] == [(host, app_id)]
    finally:
        assert (await api.call("DELETE", f"/custom_hostname/{host}")).status == 204  # others expect none
    hosts = (await alpha.send(cli.CUSTOM_HOSTNAMES, appId=app_id))["Body"]
    assert host not in json.dumps(hosts)


async def test_customer_paging_and_test_licenses(alpha: Cli, vendor_env: VendorEnv):
    """More than one page (100): the CLI's loop stops on totalCustomers; test licenses only on request."""
    app = (await alpha.send(cli.APP_CREATE, name="CLI Paging"))["app"]
    api = VendorClient(vendor_env, "alpha")
    for i in range(101):
        c = await api.call("POST", "/customer", {"name": f"Paged {i:03}", "appSlug": app["slug"]})
        assert c.status == 201
        vendor_env.canaries.append(c.body["customer"]["licenseId"])
    test_lic = await api.call(
        "POST", "/customer", {"name": "Paged Test", "appSlug": app["slug"], "licenseType": "test"}
    )
    vendor_env.canaries.append(test_lic.body["customer"]["licenseId"])
    every, pages = await alpha.list_customers(app["id"])
    assert (len(every), len({c["id"] for c in every}), pages) == (101, 101, 2)
    assert "Paged Test" not in [c["name"] for c in every]
    with_test, _ = await alpha.list_customers(app["id"], include_test=True)
    assert len(with_test) == 102
    # Every customer is on the app's default channel when none was named.
    assert {c["channels"][0]["name"] for c in with_test} == {"Stable"}
    # The search pages too (offset 0, 100: total_hits 101) and matches by substring.
    first = await alpha.send(cli.CUSTOMER_SEARCH, appId=app["id"], offset=0, name="paged 0")
    assert first["total_hits"] == 100 and len(first["customers"]) == 100  # "Paged 000".."Paged 099"
    assert (await alpha.by_name(app["id"], "Paged 100"))["name"] == "Paged 100"


async def test_what_pullgate_refuses_is_named(alpha: Cli):
    app_id = await alpha.app_id("alpha-app")
    stable = await alpha.channel(app_id, "Stable")
    base = {
        "name": "Refused",
        "channelId": stable["id"],
        "customId": "",
        "appId": app_id,
        "type": "dev",
        "expiresAt": "",
        "email": "r@r.test",
    }
    req = cli.CUSTOMER_CREATE
    bad_type = await alpha.send(req, want=400, valid=False, **{**base, "type": "gold"})
    assert [e.split(":")[0] for e in bad_type["errors"]] == ["type"]  # named as the CLI spelt it
    unknown = await alpha.send(req, want=400, **{**base, "channelId": "Nightly"})
    assert unknown["errors"] == ["channels[0]: no channel 'Nightly' in app 'alpha-app'"]
    for field, value, named in (
        ("entitlementValues", [{"name": "seats", "value": "5"}], "entitlementValues"),
        (
            "channels",
            [{"channel_id": stable["id"], "pinned_channel_sequence": 3}],
            "channels[0].pinned_channel_sequence",
        ),
        ("is_airgap_enabled", "yes", "is_airgap_enabled"),
        ("seats", 5, "seats"),
    ):
        path, body = req.fill(**base)
        body[field] = value
        async with aiohttp.ClientSession() as s:
            async with s.post(alpha.env.admin + "/vendor" + path, json=body, headers=cli.headers(alpha.token)) as r:
                answer = await r.json()
        assert r.status == 400 and [e.split(":")[0] for e in answer["errors"]] == [named], answer
    # The flags alone are accepted (and ignored): the same request with an empty expiry works.
    ok = await alpha.send(req, shows_license=True, **base)
    alpha.env.canaries.append(ok["customer"]["installationId"])
    assert ok["customer"]["expiresAt"] is None and ok["customer"]["customId"] is None
    # Every 404 says why.
    for path in (
        "/v3/app/no-such-app/customers?currentPage=0",
        "/v3/customer/nope",
        "/v3/no/such/route",
        f"/v3/app/{app_id}/channel/Stable",
    ):
        async with aiohttp.ClientSession() as s:
            async with s.get(alpha.env.admin + "/vendor" + path, headers=cli.headers(alpha.token)) as r:
                assert r.status == 404 and (await r.json())["message"], path
    # Replicated's older API version (some CLI releases ask it for an app first): a JSON 404 too.
    async with aiohttp.ClientSession() as s:
        async with s.get(alpha.env.admin + "/vendor/v1/app/x", headers=cli.headers(alpha.token)) as r:
            assert r.status == 404 and "/vendor/v3" in (await r.json())["message"]


async def test_another_teams_app_is_not_found(alpha: Cli, vendor_env: VendorEnv):
    beta = Cli(vendor_env, "beta")
    app_id = await alpha.app_id("alpha-app")
    stable = await alpha.channel(app_id, "Stable")
    await beta.send(cli.CUSTOMER_LS, want=404, appId=app_id, page=0)
    await beta.send(cli.CHANNEL_GET, want=404, appId=app_id, channel_q=stable["id"])
    await beta.send(cli.CHANNEL_LIST, want=404, appId=app_id, channel_q="Stable")
    await beta.send(cli.CUSTOM_HOSTNAMES, want=404, appId=app_id)
    await beta.send(cli.CUSTOMER_SEARCH, want=404, appId=app_id, offset=0, name="CLI")
    body = {
        "name": "x",
        "channelId": stable["id"],
        "customId": "",
        "appId": app_id,
        "type": "dev",
        "expiresAt": "",
        "email": "x@x.test",
    }
    refused = await beta.send(cli.CUSTOMER_CREATE, want=400, **body)
    assert refused["errors"] == [f"app_id: no app {app_id!r}"]
    # beta's own customer (bootstrapped from the config file, no channel named): on Stable.
    beta_app = await beta.app_id("beta-app")
    listed, _ = await beta.list_customers(beta_app)
    assert [c["channels"][0]["name"] for c in listed] == ["Stable"]
