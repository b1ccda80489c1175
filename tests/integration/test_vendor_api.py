"""The vendor API against a running pullgate: every route, auth failures, validation,
team isolation, the pull log, the image allowlist, and no secret in any answer.

Every answer goes through VendorClient, which checks it against the OpenAPI
document and searches it for the canary secrets. When the whole module has run
(in any order), a module fixture checks that its tests exercised every documented
operation and saw a success answer of each.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from proxy.admin.openapi import document
from tests.support.capture import CaptureServer
from tests.support.vendor import (
    VendorClient,
    VendorEnv,
    documented_operations,
    kots_license,
    public_pem,
    rsa_key,
)

OCI = "application/vnd.oci.image.manifest.v1+json"


def basic(license_id: str) -> str:
    return "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()


@pytest.fixture(scope="module", autouse=True)
def every_documented_operation(vendor_env: VendorEnv, request: pytest.FixtureRequest) -> Iterator[None]:
    """Records what this module's tests exercise; after the last of them, in whatever
    order they ran, every documented operation must have been exercised with a success
    answer. Skipped when only some of the module's tests were selected, or one failed."""
    outer, vendor_env.exercised = vendor_env.exercised, set()
    failed_before = request.session.testsfailed
    yield
    exercised, vendor_env.exercised = vendor_env.exercised, outer | vendor_env.exercised
    module = request.node
    selected = {item.nodeid for item in request.session.items if item.parent is module}
    if selected != {item.nodeid for item in module.collect()} or request.session.testsfailed > failed_before:
        return
    documented = documented_operations(cli=False)  # the CLI's own: tests/integration/test_replicated_cli.py
    assert documented - {(m, p) for m, p, _ in exercised} == set(), "documented operations no test exercised"
    for method, path in sorted(documented):
        ok = {s for m, p, s in exercised if (m, p) == (method, path) and s < 300}
        assert ok, f"{method} {path}: no success answer was checked"


@pytest.fixture
def api(vendor_env: VendorEnv) -> VendorClient:
    return VendorClient(vendor_env, "alpha")


@pytest.fixture
def beta(vendor_env: VendorEnv) -> VendorClient:
    return VendorClient(vendor_env, "beta")


async def pull(env: VendorEnv, method: str, path: str, license_id: str, **headers: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        hdrs = {"Authorization": basic(license_id), "Accept": OCI, **headers}
        async with s.request(method, env.server.url + path, headers=hdrs) as r:
            body = await r.read()
            return r.status, body, r.headers


def _basic_registry(env: VendorEnv, slug: str, **extra: Any) -> dict[str, Any]:
    up = env.basic
    return {
        "provider": "other",
        "endpoint": f"{slug}.example.test",
        "slug": slug,
        "url": up.url,
        "insecure": True,
        "username": up.username,
        "password": up.password,
        **extra,
    }


async def _logs(api: VendorClient, want: int, **params: str) -> list[dict[str, Any]]:
    """The pull log is written in the background: poll briefly."""
    deadline = time.monotonic() + 5
    while True:
        reply = await api.call("GET", "/pull_logs", params=params)
        assert reply.status == 200, reply.body
        if len(reply.body["logs"]) >= want or time.monotonic() > deadline:
            return reply.body["logs"]
        await asyncio.sleep(0.05)


# --- the document ----------------------------------------------------------------------


async def test_openapi_document_validates_and_is_served(api: VendorClient):
    served = await api.as_team(None).call("GET", "/openapi.json")
    assert served.status == 200
    validate(served.body)  # openapi-spec-validator: raises on an invalid document
    assert served.body == document()
    ops = {(m, p) for p, item in served.body["paths"].items() for m in item if m != "parameters"}
    assert ("post", "/external_registry") in ops and ("get", "/pull_logs") in ops


# --- auth ----------------------------------------------------------------------------------


async def test_every_route_refuses_missing_and_wrong_tokens(api: VendorClient):
    anon = api.as_team(None)
    for path, item in document()["paths"].items():
        if path == "/openapi.json":
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in item:
            if method == "parameters":
                continue
            for headers in (
                {},
                {"Authorization": "wrong-token"},
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()},
            ):
                reply = await anon.call(method.upper(), concrete, body={}, headers=headers)
                assert reply.status == 401, (method, path, headers)
                assert "token" in reply.body["message"]


async def test_token_as_bare_or_bearer(api: VendorClient, vendor_env: VendorEnv):
    anon = api.as_team(None)
    for header in (vendor_env.tokens["alpha"], f"Bearer {vendor_env.tokens['alpha']}"):
        reply = await anon.call("GET", "/apps", headers={"Authorization": header})
        assert reply.status == 200
        assert "alpha-app" in [a["slug"] for a in reply.body["apps"]]


# --- external registries -------------------------------------------------------------------


async def test_registry_lifecycle(api: VendorClient, vendor_env: VendorEnv):
    created = await api.call("POST", "/external_registry", _basic_registry(vendor_env, "life", appIds=["alpha-app"]))
    assert created.status == 201, created.body
    reg = created.body["external_registry"]
    assert reg["slug"] == "life" and reg["authType"] == "password" and reg["username"] == "vendor"
    assert reg["appSlugs"] == ["alpha-app"] and len(reg["appIds"]) == 1
    dup = await api.call("POST", "/external_registry", _basic_registry(vendor_env, "life"))
    assert dup.status == 409
    listed = await api.call("GET", "/external_registries")
    assert "life" in [r["slug"] for r in listed.body["external_registries"]]
    by_endpoint = await api.call("GET", "/external_registry/life.example.test")
    assert by_endpoint.status == 200 and by_endpoint.body["external_registry"]["slug"] == "life"

    ok = await api.call("PUT", "/external_registry/test", {"endpoint": "life.example.test", "image": "vendor/oci:v1"})
    assert ok.status == 200 and ok.body == {"status": 200, "ok": True, "reason": "ok"}
    missing = await api.call("PUT", "/external_registry/test", {"endpoint": "life", "image": "vendor/oci:nope"})
    assert missing.body["status"] == 404 and not missing.body["ok"]
    assert missing.body["reason"].startswith("MANIFEST_UNKNOWN")

    gone = await api.call("DELETE", "/external_registry/life")
    assert gone.status == 204
    assert (await api.call("GET", "/external_registry/life")).status == 404
    assert (await api.call("DELETE", "/external_registry/life")).status == 404
    assert (await api.call("PUT", "/external_registry/test", {"endpoint": "life", "image": "a/b"})).status == 404


async def test_registry_creation_validates_credentials(api: VendorClient, vendor_env: VendorEnv):
    bad = await api.call("POST", "/external_registry", _basic_registry(vendor_env, "badcreds", password="wrong-pw"))
    assert bad.status == 400
    assert "401" in bad.body["message"] and "credentials" in bad.body["errors"][0]
    assert (await api.call("GET", "/external_registry/badcreds")).status == 404  # nothing stored
    # Without an image, a 404 for the placeholder still proves the credentials.
    body = _basic_registry(vendor_env, "noimage")
    assert (await api.call("POST", "/external_registry", body)).status == 201
    skipped = await api.call(
        "POST", "/external_registry", _basic_registry(vendor_env, "skipped", password="x", skipValidation=True)
    )
    assert skipped.status == 201


async def test_registry_validation_lists_every_problem(api: VendorClient):
    reply = await api.call(
        "POST",
        "/external_registry",
        {
            "provider": "nope",
            "endpoint": "https://x/y",
            "url": "ftp://x",
            "insecure": "yes",
            "appIds": ["no-such-app"],
            "username": "u",
            "colour": "blue",
            "slug": "Bad Slug",
        },
    )
    assert reply.status == 400
    fields = {e.split(":")[0] for e in reply.body["errors"]}
    assert {"provider", "endpoint", "url", "insecure", "appIds", "colour", "slug"} <= fields
    assert "username and password" in fields
    for problem in reply.body["errors"]:
        assert problem in reply.body["message"]
    for body, field in (([], "body"), ("not json", "body")):
        raw = json.dumps(body).encode() if field == "body" and body == [] else b"{not json"
        r = await api.call("POST", "/external_registry", raw=raw)
        assert r.status == 400 and r.body["errors"][0].startswith("body")
    reserved = await api.call("POST", "/external_registry", {"provider": "other", "endpoint": "a.test", "slug": "test"})
    assert reserved.status == 400 and "reserved" in reserved.body["message"]


async def test_provider_credentials_are_accepted_and_never_echoed(api: VendorClient, vendor_env: VendorEnv):
    secret_key = "canary-ecr-secret-" + secrets.token_hex(8)
    sa_key = json.dumps(
        {
            "type": "service_account",
            "client_email": "pull@proj.iam.gserviceaccount.com",
            "private_key": "canary-sa-key-" + secrets.token_hex(8),
        }
    )
    token = "canary-ghcr-token-" + secrets.token_hex(8)
    vendor_env.canaries += [secret_key, json.loads(sa_key)["private_key"], token]
    ecr = await api.call(
        "POST",
        "/external_registry",
        {
            "provider": "ecr",
            "endpoint": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "slug": "ecr",
            "accessKeyId": "AKIAEXAMPLE",
            "secretAccessKey": secret_key,
            "region": "us-east-1",
            "roleArn": "arn:aws:iam::123456789012:role/pull",
            "skipValidation": True,
        },
    )
    assert ecr.status == 201, ecr.body
    e = ecr.body["external_registry"]
    assert (e["authType"], e["username"], e["region"], e["roleArn"]) == (
        "accesskey",
        "AKIAEXAMPLE",
        "us-east-1",
        "arn:aws:iam::123456789012:role/pull",
    )
    gar = await api.call(
        "POST",
        "/external_registry",
        {
            "provider": "gar",
            "endpoint": "us-docker.pkg.dev",
            "slug": "gar",
            "username": "_json_key",
            "password": sa_key,
            "skipValidation": True,
        },
    )
    assert gar.status == 201 and gar.body["external_registry"]["authType"] == "serviceaccount"
    gcr = await api.call(
        "POST",
        "/external_registry",
        {"provider": "gcr", "slug": "gcr", "serviceAccountKey": sa_key, "skipValidation": True},
    )
    assert gcr.status == 201 and gcr.body["external_registry"]["endpoint"] == "gcr.io"
    ghcr = await api.call(
        "POST",
        "/external_registry",
        {"provider": "ghcr", "username": "octocat", "password": token, "skipValidation": True},
    )
    assert ghcr.status == 201 and ghcr.body["external_registry"]["slug"] == "ghcr.io"
    # A key that is not a service-account JSON is refused without echoing it.
    not_json = "canary-not-json-" + secrets.token_hex(8)
    vendor_env.canaries.append(not_json)
    bad = await api.call(
        "POST",
        "/external_registry",
        {"provider": "gcr", "slug": "gcr2", "username": "_json_key", "password": not_json, "skipValidation": True},
    )
    assert bad.status == 400 and "client_email" in bad.body["message"]
    no_secret = await api.call(
        "POST",
        "/external_registry",
        {"provider": "ecr", "endpoint": "210987654321.dkr.ecr.eu-west-1.amazonaws.com", "skipValidation": True},
    )
    assert no_secret.status == 400
    assert {e.split(":")[0] for e in no_secret.body["errors"]} == {"accessKeyId", "secretAccessKey"}
    for slug in ("ecr", "gar", "gcr", "ghcr.io"):
        assert (await api.call("DELETE", f"/external_registry/{slug}")).status == 204


async def test_credential_rotation_takes_effect_at_once(api: VendorClient, vendor_env: VendorEnv):
    assert (await api.call("POST", "/external_registry", _basic_registry(vendor_env, "rot"))).status == 201
    image = {"endpoint": "rot", "image": "vendor/oci:v1"}
    assert (await api.call("PUT", "/external_registry/test", image)).body["ok"]
    # A wrong secret is refused by validation, and the old one stays in force.
    refused = await api.call("PUT", "/external_registry/rot", {"password": "wrong", "image": "vendor/oci:v1"})
    assert refused.status == 400
    assert (await api.call("PUT", "/external_registry/test", image)).body["ok"]
    # Stored without validation, the wrong secret is what the next request uses.
    stored = await api.call("PUT", "/external_registry/rot", {"password": "wrong", "skipValidation": True})
    assert stored.status == 200, stored.body
    assert (await api.call("PUT", "/external_registry/test", image)).body["status"] == 401
    back = await api.call(
        "PUT", "/external_registry/rot", {"password": vendor_env.basic.password, "image": "vendor/oci:v1"}
    )
    assert back.status == 200
    assert (await api.call("PUT", "/external_registry/test", image)).body["ok"]
    fixed = await api.call("PUT", "/external_registry/rot", {"provider": "ecr", "slug": "other"})
    assert fixed.status == 400 and len(fixed.body["errors"]) == 2
    assert (await api.call("PUT", "/external_registry/nope", {"password": "x"})).status == 404


async def test_a_stored_secret_is_never_sent_to_a_new_url(api: VendorClient, vendor_env: VendorEnv):
    """Hole 3: changing only `url` used to send the stored password to the new destination."""
    assert (await api.call("POST", "/external_registry", _basic_registry(vendor_env, "replay"))).status == 201
    with CaptureServer() as trap:
        for extra in ({}, {"skipValidation": True}, {"image": "vendor/oci:v1"}):
            moved = await api.call("PUT", "/external_registry/replay", {"url": trap.url, **extra})
            assert trap.credentials == [], f"the stored password was sent to the new url ({extra})"
            assert moved.status == 400, moved.body
            assert [e.split(":")[0] for e in moved.body["errors"]] == ["url"]
            assert "secret again (password)" in moved.body["message"]
        assert trap.credentials == [] and trap.seen == []
        # Unchanged, and still working where its owner gave it.
        reg = (await api.call("GET", "/external_registry/replay")).body["external_registry"]
        assert reg["url"] == vendor_env.basic.url
        image = {"endpoint": "replay", "image": "vendor/oci:v1"}
        assert (await api.call("PUT", "/external_registry/test", image)).body["ok"]
        # Given again, the secret goes where its owner now sends it.
        again = {"url": trap.url, "password": "typed-for-the-trap", "skipValidation": True}
        assert (await api.call("PUT", "/external_registry/replay", again)).status == 200
        assert (await api.call("PUT", "/external_registry/test", image)).body["status"] == 401
        assert trap.credentials and vendor_env.basic.password not in " ".join(
            base64.b64decode(c.split()[1]).decode() for c in trap.credentials
        )
    assert (await api.call("DELETE", "/external_registry/replay")).status == 204


# --- apps -------------------------------------------------------------------------------


async def test_apps(api: VendorClient, beta: VendorClient):
    created = await api.call("POST", "/app", {"slug": "alpha-two", "name": "Alpha Two", "imageAllowlist": ["vendor/*"]})
    assert created.status == 201
    assert created.body["app"]["imageAllowlist"] == ["vendor/*"] and created.body["app"]["kotsPublicKey"] is None
    assert (await api.call("POST", "/app", {"slug": "alpha-two"})).status == 409
    assert (await api.call("POST", "/app", {"slug": "beta-app"})).status == 409  # slugs are global
    got = await api.call("GET", "/app/alpha-two")
    assert got.body["app"]["name"] == "Alpha Two"
    patched = await api.call("PATCH", "/app/alpha-two", {"imageAllowlist": [], "name": "A2"})
    assert patched.body["app"]["imageAllowlist"] == [] and patched.body["app"]["name"] == "A2"
    slugs = [a["slug"] for a in (await api.call("GET", "/apps")).body["apps"]]
    assert "alpha-two" in slugs and "beta-app" not in slugs
    bad = await api.call(
        "POST",
        "/app",
        {"slug": "No Good", "name": "", "imageAllowlist": "vendor/*", "kotsPublicKey": "not a key", "extra": 1},
    )
    assert bad.status == 400
    assert {e.split(":")[0] for e in bad.body["errors"]} == {"slug", "name", "imageAllowlist", "kotsPublicKey", "extra"}
    bad_patch = await api.call("PATCH", "/app/alpha-two", {"imageAllowlist": ["/abs", ""]})
    assert bad_patch.status == 400 and len(bad_patch.body["errors"]) == 2
    assert (await api.call("PATCH", "/app/nope", {})).status == 404


# --- customers ---------------------------------------------------------------------------


async def test_customers(api: VendorClient, vendor_env: VendorEnv):
    body = {
        "name": "Cust One",
        "email": "one@c.test",
        "appSlug": "alpha-app",
        "licenseType": "trial",
        "expiresAt": "2031-01-01T00:00:00Z",
    }
    created = await api.call("POST", "/customer", body)
    assert created.status == 201
    c = created.body["customer"]
    lic = c["licenseId"]
    vendor_env.canaries.append(lic)  # from now on it must appear nowhere but the vendor's show
    assert len(lic) >= 22 and lic.isalnum()  # >= 128 bits of base62
    assert (c["status"], c["licenseType"], c["expiresAt"]) == ("active", "trial", "2031-01-01T00:00:00Z")
    listed = await api.call("GET", "/customers")
    assert c["id"] in [x["id"] for x in listed.body["customers"]]
    assert all("licenseId" not in x for x in listed.body["customers"])
    filtered = await api.call("GET", "/customers", params={"appSlug": "alpha-app"})
    assert all(x["appSlug"] == "alpha-app" for x in filtered.body["customers"])
    # The vendor's own view carries the license ID: read it unchecked for canaries.
    vendor_env.canaries.remove(lic)
    shown = await api.call("GET", f"/customer/{c['id']}")
    vendor_env.canaries.append(lic)
    assert shown.body["customer"]["licenseId"] == lic
    for action, status in (("revoke", "revoked"), ("archive", "archived"), ("restore", "active")):
        r = await api.call("POST", f"/customer/{c['id']}/{action}")
        assert r.status == 200 and r.body["customer"]["status"] == status
    patched = await api.call("PATCH", f"/customer/{c['id']}", {"expiresAt": None, "email": None})
    assert patched.body["customer"]["expiresAt"] is None and patched.body["customer"]["email"] is None
    bad = await api.call(
        "POST",
        "/customer",
        {"name": "", "email": "nope", "appSlug": "beta-app", "licenseType": "gold", "expiresAt": "soon"},
    )
    assert bad.status == 400
    assert {e.split(":")[0] for e in bad.body["errors"]} == {"name", "email", "appSlug", "licenseType", "expiresAt"}
    assert (await api.call("GET", "/customer/nope")).status == 404
    assert (await api.call("POST", "/customer/nope/revoke")).status == 404
    assert (await api.call("PATCH", "/customer/nope", {})).status == 404
    assert (await api.call("GET", "/customers", params={"appSlug": "beta-app"})).status == 404
    assert (await api.call("GET", "/customers", params={"colour": "x"})).status == 400


async def test_egress_threshold_and_webhook_routes(api: VendorClient, vendor_env: VendorEnv):
    """Each route once, shapes checked (tests/integration/test_usage.py and test_webhooks.py go deeper)."""
    c = (await api.call("POST", "/customer", {"name": "Metered", "appSlug": "alpha-app",
                                               "egressThresholdBytes": 5_000_000})).body["customer"]  # fmt: skip
    vendor_env.canaries.append(c["licenseId"])
    assert c["egressThresholdBytes"] == 5_000_000
    bad = await api.call("PATCH", f"/customer/{c['id']}", {"egressThresholdBytes": -1})
    assert bad.status == 400 and bad.body["errors"][0].startswith("egressThresholdBytes:")
    state = (await api.call("GET", f"/customer/{c['id']}/egress")).body["egress"]
    assert (state["bytes"], state["thresholdBytes"], state["reached"], state["notification"]) == (
        0,
        5_000_000,
        False,
        None,
    )
    report = await api.call("GET", "/egress", params={"customer": c["id"], "groupBy": "image"})
    assert report.status == 200 and report.body["rows"] == [] and report.body["totals"]["bytes"] == 0
    assert (await api.call("GET", "/team/webhook")).body == {"webhook": None}
    put = await api.call("PUT", "/team/webhook", {"url": "http://127.0.0.1:9/hook", "secret": "whsec-canary-1"})
    assert put.status == 200 and put.body["webhook"]["secretSet"] is True
    assert "whsec-canary-1" not in json.dumps((await api.call("GET", "/team/webhook")).body)
    assert (await api.call("GET", "/team/webhook/deliveries")).body == {"deliveries": []}
    assert (await api.call("GET", "/team/webhook/deliveries", params={"limit": "0"})).status == 400
    assert (await api.call("DELETE", "/team/webhook")).status == 204
    assert (await api.call("DELETE", "/team/webhook")).status == 404


async def test_release_channels_in_pullgates_spelling(api: VendorClient):
    app = (await api.call("GET", "/app/alpha-app")).body["app"]
    assert [(c["name"], c["isDefault"]) for c in app["channels"]] == [
        ("Stable", True),
        ("Beta", False),
        ("Unstable", False),
    ]
    assert (await api.call("GET", f"/app/{app['id']}")).body["app"]["slug"] == "alpha-app"  # by id too
    by_name = await api.call("POST", "/app", {"name": "Named Only"})
    assert by_name.status == 201 and by_name.body["app"]["slug"] == "named-only"
    body = {"name": "Chan", "appSlug": "alpha-app", "channels": ["unstable", "Beta"], "customId": "ext-9"}
    c = (await api.call("POST", "/customer", body)).body["customer"]
    assert [(ch["name"], ch["isDefaultForCustomer"]) for ch in c["channels"]] == [("Unstable", True), ("Beta", False)]
    assert c["customId"] == "ext-9" and c["type"] == c["licenseType"] == "prod"
    moved = await api.call("PATCH", f"/customer/{c['id']}", {"channels": ["Stable"], "customId": None})
    assert [ch["name"] for ch in moved.body["customer"]["channels"]] == ["Stable"]
    assert moved.body["customer"]["customId"] is None
    kept = await api.call("PATCH", f"/customer/{c['id']}", {"name": "Chan 2"})
    assert [ch["name"] for ch in kept.body["customer"]["channels"]] == ["Stable"]
    bad = await api.call("PATCH", f"/customer/{c['id']}", {"channels": ["Nightly"], "app_id": "x"})
    assert bad.status == 400
    assert bad.body["errors"] == ["app_id: unknown field", "channels[0]: no channel 'Nightly' in app 'alpha-app'"]
    both = await api.call("POST", "/customer", {**body, "type": "dev", "licenseType": "dev"})
    assert both.status == 400 and both.body["errors"] == ["licenseType: give type or licenseType, not both"]
    listed = (await api.call("GET", "/app/alpha-app/channels", params={"channelName": "BETA"})).body["channels"]
    assert [ch["name"] for ch in listed] == ["Beta"]
    assert (await api.call("GET", "/app/alpha-app/channels", params={"colour": "x"})).status == 400


# --- pulls, the pull log, revocation, allowlist -------------------------------------------


async def test_pull_is_logged_and_revocation_stops_it(api: VendorClient, vendor_env: VendorEnv):
    assert (await api.call("POST", "/external_registry", _basic_registry(vendor_env, "pl"))).status == 201
    c = (await api.call("POST", "/customer", {"name": "Puller", "appSlug": "alpha-app"})).body["customer"]
    lic = c["licenseId"]
    vendor_env.canaries.append(lic)
    img = vendor_env.basic.images["oci"]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    base = "/v2/proxy/alpha-app/pl/vendor/oci"
    status, body, _ = await pull(vendor_env, "GET", f"{base}/manifests/v1", lic)
    assert status == 200 and body == img.manifest
    digest, size = img.blobs[-1]
    status, body, _ = await pull(vendor_env, "GET", f"{base}/blobs/{digest}", lic)
    assert status == 200 and len(body) == size
    assert (await pull(vendor_env, "HEAD", f"{base}/manifests/v1", lic))[0] == 200
    async with aiohttp.ClientSession() as s:
        params = {"service": vendor_env.server.host, "scope": "repository:proxy/alpha-app/pl/vendor/oci:pull"}
        async with s.get(
            vendor_env.server.url + "/v2/token", params=params, headers={"Authorization": basic(lic)}
        ) as r:
            assert r.status == 200

    logs = await _logs(api, 4, customer=c["id"])
    by_action = {e["action"]: e for e in logs}
    assert set(by_action) == {"manifest", "blob", "HEAD", "auth"}
    m = by_action["manifest"]
    assert (m["registry"], m["image"], m["reference"], m["status"], m["success"], m["bytes"]) == (
        "pl",
        "vendor/oci",
        "v1",
        200,
        True,
        len(img.manifest),
    )
    assert by_action["blob"]["bytes"] == size and by_action["blob"]["reference"] == digest
    assert by_action["HEAD"]["bytes"] == 0 and by_action["auth"]["status"] == 200
    assert m["customerName"] == "Puller" and m["appSlug"] == "alpha-app"
    # Filters: registry, time range, registry logs route.
    assert len(await _logs(api, 3, registry="pl")) == 3  # the auth line names no registry
    assert await _logs(api, 0, customer=c["id"], until=start.isoformat()) == []
    assert len(await _logs(api, 4, customer=c["id"], since=start.isoformat())) == 4
    reg_logs = await api.call("GET", "/external_registry/logs", params={"endpoint": "pl.example.test"})
    assert len(reg_logs.body["logs"]) == 3
    assert (await api.call("GET", "/external_registry/logs")).status == 400
    bad = await api.call("GET", "/pull_logs", params={"since": "yesterday", "limit": "0", "x": "1"})
    assert bad.status == 400 and len(bad.body["errors"]) == 3
    listed = (await api.call("GET", "/external_registries")).body["external_registries"]
    assert next(r for r in listed if r["slug"] == "pl")["lastUsedAt"] is not None

    # Revoked through the API: the very next pull is refused (this process's cache is cleared).
    assert (await api.call("POST", f"/customer/{c['id']}/revoke")).status == 200
    assert (await pull(vendor_env, "GET", f"{base}/manifests/v1", lic))[0] == 401
    assert (await api.call("POST", f"/customer/{c['id']}/restore")).status == 200
    assert (await pull(vendor_env, "GET", f"{base}/manifests/v1", lic))[0] == 200
    # Expiry set through the API bites too.
    past = await api.call("PATCH", f"/customer/{c['id']}", {"expiresAt": "2020-01-01T00:00:00Z"})
    assert past.status == 200
    assert (await pull(vendor_env, "GET", f"{base}/manifests/v1", lic))[0] == 401


async def test_image_allowlist_refuses_before_upstream_io(api: VendorClient, vendor_env: VendorEnv):
    assert (
        await api.call("POST", "/app", {"slug": "allow-app", "imageAllowlist": ["vendor/oci", "vendor/d*"]})
    ).status == 201
    assert (await api.call("POST", "/external_registry", _basic_registry(vendor_env, "al"))).status == 201
    sentinel = await api.call(
        "POST",
        "/external_registry",
        {
            "provider": "other",
            "endpoint": "sentinel.test",
            "slug": "sent",
            "url": vendor_env.sentinel.url,
            "insecure": True,
            "skipValidation": True,
        },
    )
    assert sentinel.status == 201
    lic = (await api.call("POST", "/customer", {"name": "Allow", "appSlug": "allow-app"})).body["customer"]["licenseId"]
    vendor_env.canaries.append(lic)
    assert (await pull(vendor_env, "GET", "/v2/proxy/allow-app/al/vendor/oci/manifests/v1", lic))[0] == 200
    docker = "application/vnd.docker.distribution.manifest.v2+json"
    assert (await pull(vendor_env, "GET", "/v2/proxy/allow-app/al/vendor/docker/manifests/v1", lic, Accept=docker))[
        0
    ] == 200
    before = vendor_env.sentinel.connections
    status, body, _ = await pull(vendor_env, "GET", "/v2/proxy/allow-app/al/vendor/index/manifests/v1", lic)
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    status, body, _ = await pull(vendor_env, "GET", "/v2/proxy/allow-app/sent/other/thing/manifests/v1", lic)
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    assert vendor_env.sentinel.connections == before  # refused with no upstream I/O
    # Changing only which apps use a registry needs no credentials test (and makes no upstream call).
    relinked = await api.call("PUT", "/external_registry/sent", {"appIds": ["allow-app"]})
    assert relinked.status == 200 and relinked.body["external_registry"]["appSlugs"] == ["allow-app"]
    assert vendor_env.sentinel.connections == before
    # Lifting the allowlist lets it through.
    assert (await api.call("PATCH", "/app/allow-app", {"imageAllowlist": []})).status == 200
    index = "application/vnd.oci.image.index.v1+json"
    assert (await pull(vendor_env, "GET", "/v2/proxy/allow-app/al/vendor/index/manifests/v1", lic, Accept=index))[
        0
    ] == 200


# --- KOTS license import -----------------------------------------------------------------


async def test_license_import(api: VendorClient, vendor_env: VendorEnv):
    key = rsa_key()
    assert (await api.call("POST", "/app", {"slug": "kots-app", "kotsPublicKey": public_pem(key)})).status == 201
    for version in ("v1beta1", "v1beta2"):
        lic_id = f"kots{version}" + secrets.token_hex(12)
        vendor_env.canaries.append(lic_id)
        text = kots_license(
            key,
            version,
            license_id=lic_id,
            app_slug="kots-app",
            name=f"KOTS {version}",
            expires_at="2030-06-01T00:00:00Z",
            license_type="paid",
        )
        tampered = kots_license(
            key,
            version,
            license_id=lic_id,
            app_slug="kots-app",
            name=f"KOTS {version}",
            expires_at="2030-06-01T00:00:00Z",
            tamper={"customerName": "Someone Else"},
        )
        refused = await api.call("POST", "/license/import", {"license": tampered})
        assert refused.status == 400 and "customerName" in refused.body["message"]
        done = await api.call("POST", "/license/import", {"license": text})
        assert done.status == 201, done.body
        c = done.body["customer"]
        assert (c["name"], c["email"], c["appSlug"], c["licenseType"], c["expiresAt"]) == (
            f"KOTS {version}",
            "ops@customer.test",
            "kots-app",
            "paid",
            "2030-06-01T00:00:00Z",
        )
        again = await api.call("POST", "/license/import", {"license": text})
        assert again.status == 200 and again.body["created"] is False
        # The imported license works as a credential.
        async with aiohttp.ClientSession() as s:
            async with s.get(
                vendor_env.server.url + "/v2/token",
                headers={"Authorization": basic(lic_id)},
                params={"scope": "repository:proxy/kots-app/x/y:pull"},
            ) as r:
                assert r.status == 200
    # The wrong key, or no key: refused.
    other = rsa_key()
    forged = kots_license(other, "v1beta2", license_id="forged" + secrets.token_hex(12), app_slug="kots-app", name="F")
    r = await api.call("POST", "/license/import", {"license": forged})
    assert r.status == 400 and "signature" in r.body["message"]
    nokey = kots_license(key, "v1beta2", license_id="nokey" + secrets.token_hex(12), app_slug="alpha-app", name="N")
    r = await api.call("POST", "/license/import", {"license": nokey})
    assert r.status == 400 and "kotsPublicKey" in r.body["message"]
    r = await api.call("POST", "/license/import", {"license": "kind: Secret"})
    assert r.status == 400
    r = await api.call("POST", "/license/import", {})
    assert r.status == 400


# --- custom hostnames --------------------------------------------------------------------


async def test_custom_hostnames(api: VendorClient, beta: VendorClient, vendor_env: VendorEnv):
    host = f"images-{secrets.token_hex(3)}.alpha.example"
    bad = await api.call("POST", "/custom_hostnames", {"hostname": "Not A Host", "extra": 1})
    assert bad.status == 400 and len(bad.body["errors"]) == 2
    made = await api.call("POST", "/custom_hostnames", {"hostname": host})
    assert made.status == 201
    h = made.body["custom_hostname"]
    assert (h["status"], h["isDefault"], h["certificate"]) == ("pending", False, None)
    assert h["verification"]["dnsRecord"] == f"_pullgate-challenge.{host}"
    token = h["verification"]["dnsValue"]
    assert (await beta.call("POST", "/custom_hostnames", {"hostname": host})).status == 409
    # Another team neither sees nor touches it.
    assert host not in json.dumps((await beta.call("GET", "/custom_hostnames")).body)
    for method, path in (
        ("POST", f"/custom_hostname/{host}/verify"),
        ("DELETE", f"/custom_hostname/{host}"),
        ("POST", f"/custom_hostname/{host}/default"),
    ):
        assert (await beta.call(method, path)).status == 404
    # Not verifiable yet; a pending hostname cannot be the default.
    failed = await api.call("POST", f"/custom_hostname/{host}/verify")
    assert failed.status == 200 and failed.body["custom_hostname"]["status"] == "failed"
    assert "no TXT record" in failed.body["custom_hostname"]["reason"]
    assert (await api.call("POST", f"/custom_hostname/{host}/default")).status == 400
    vendor_env.dns.txt[f"_pullgate-challenge.{host}"] = [token]
    ok = await api.call("POST", f"/custom_hostname/{host}/verify")
    assert ok.body["custom_hostname"]["status"] == "verified" and ok.body["custom_hostname"]["reason"] is None
    assert (await api.call("POST", f"/custom_hostname/{host}/default")).body["custom_hostname"]["isDefault"]
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(host)
    cert, key = leaf.cert_chain_pems[0].bytes().decode(), leaf.private_key_pem.bytes().decode()
    vendor_env.canaries.append(key.splitlines()[1])
    wrong = ca.issue_cert("other.example")
    refused = await api.call(
        "PUT",
        f"/custom_hostname/{host}/certificate",
        {"certificate": wrong.cert_chain_pems[0].bytes().decode(), "key": key},
    )
    assert refused.status == 400
    up = await api.call("PUT", f"/custom_hostname/{host}/certificate", {"certificate": cert, "key": key})
    assert up.status == 200
    assert up.body["custom_hostname"]["certificate"]["expiresInDays"] > 300
    listed = (await api.call("GET", "/custom_hostnames")).body["custom_hostnames"]
    assert [x["hostname"] for x in listed] == [host]
    assert (await api.call("DELETE", f"/custom_hostname/{host}")).status == 204
    assert (await api.call("GET", "/custom_hostnames")).body["custom_hostnames"] == []


# --- isolation ---------------------------------------------------------------------------


async def test_team_isolation(api: VendorClient, beta: VendorClient, vendor_env: VendorEnv):
    assert (await api.call("POST", "/external_registry", _basic_registry(vendor_env, "mine"))).status == 201
    c = (await api.call("POST", "/customer", {"name": "Mine", "appSlug": "alpha-app"})).body["customer"]
    vendor_env.canaries.append(c["licenseId"])
    # Beta sees none of alpha's things, and cannot touch them.
    theirs = (await beta.call("GET", "/external_registries")).body["external_registries"]
    assert "mine" not in [r["slug"] for r in theirs]
    assert c["id"] not in [x["id"] for x in (await beta.call("GET", "/customers")).body["customers"]]
    assert "alpha-app" not in [a["slug"] for a in (await beta.call("GET", "/apps")).body["apps"]]
    for method, path, body in (
        ("GET", "/external_registry/mine", None),
        ("GET", "/external_registry/mine.example.test", None),
        ("PUT", "/external_registry/mine", {"password": "x", "skipValidation": True}),
        ("DELETE", "/external_registry/mine", None),
        ("PUT", "/external_registry/test", {"endpoint": "mine", "image": "vendor/oci:v1"}),
        ("GET", f"/customer/{c['id']}", None),
        ("PATCH", f"/customer/{c['id']}", {"name": "pwned"}),
        ("POST", f"/customer/{c['id']}/revoke", None),
        ("GET", "/app/alpha-app", None),
        ("PATCH", "/app/alpha-app", {"imageAllowlist": ["x"]}),
    ):
        reply = await beta.call(method, path, body)
        assert reply.status == 404, (method, path, reply.body)
    assert (await beta.call("GET", "/pull_logs", params={"customer": c["id"]})).status == 404
    assert (await beta.call("GET", "/external_registry/logs", params={"endpoint": "mine"})).status == 404
    made = await beta.call("POST", "/customer", {"name": "x", "appSlug": "alpha-app"})
    assert made.status == 400 and "appSlug" in made.body["message"]
    body = {"provider": "other", "endpoint": "b.test", "appIds": ["alpha-app"], "skipValidation": True}
    linked = await beta.call("POST", "/external_registry", body)
    assert linked.status == 400 and "appIds" in linked.body["message"]
    # Nothing changed for alpha.
    still = await api.call("PATCH", f"/customer/{c['id']}", {})  # the answer, without the license ID
    assert still.body["customer"]["status"] == "active" and still.body["customer"]["name"] == "Mine"
    assert (await api.call("PUT", "/external_registry/test", {"endpoint": "mine", "image": "vendor/oci:v1"})).body["ok"]
    # Beta's license cannot pull alpha's app; alpha's cannot pull beta's.
    assert (
        await pull(
            vendor_env, "GET", "/v2/proxy/alpha-app/mine/vendor/oci/manifests/v1", vendor_env.licenses["beta-cust"]
        )
    )[0] in (401, 403)
    assert (await pull(vendor_env, "GET", "/v2/proxy/beta-app/beta-anon/vendor/oci/manifests/v1", c["licenseId"]))[
        0
    ] in (401, 403)
    assert (
        await pull(
            vendor_env, "GET", "/v2/proxy/beta-app/beta-anon/vendor/oci/manifests/v1", vendor_env.licenses["beta-cust"]
        )
    )[0] == 200
    # Beta's pull log has beta's pull, and none of alpha's.
    logs = await _logs(beta, 1)
    assert logs and {e["appSlug"] for e in logs} == {"beta-app"}
    alpha_logs = (await api.call("GET", "/pull_logs")).body["logs"]
    assert "beta-app" not in {e["appSlug"] for e in alpha_logs}


async def test_admin_listener_is_not_on_the_proxy_listener(vendor_env: VendorEnv):
    async with aiohttp.ClientSession() as s:
        async with s.get(
            vendor_env.server.url + "/vendor/v3/apps", headers={"Authorization": vendor_env.tokens["alpha"]}
        ) as r:
            assert r.status == 404
            assert "apps" not in (await r.text())
