"""Client auth: the license is the only credential, checked on every request."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from tests.support.client import ProxyClient, basic
from tests.support.deployment import Deployment

SCOPE = "repository:proxy/acme/vendor-basic/vendor/oci:pull"
MANIFEST = "/v2/proxy/acme/vendor-basic/vendor/oci/manifests/v1"
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture
def client(deployment: Deployment) -> ProxyClient:
    return ProxyClient(deployment)


async def test_base_challenge_names_the_host_the_client_used(client: ProxyClient, deployment: Deployment):
    ans = await client.request("GET", "/v2/")
    assert ans.status == 401
    assert ans.error_code == "UNAUTHORIZED"
    assert ans.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{deployment.host}/v2/token",service="{deployment.host}"'
    )
    # An untrusted peer cannot move the realm elsewhere.
    ans = await client.request(
        "GET", "/v2/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    )
    assert 'realm="http://' + deployment.host in ans.headers["WWW-Authenticate"]


async def test_repository_challenge_carries_scope(client: ProxyClient, deployment: Deployment):
    ans = await client.request("GET", MANIFEST)
    assert ans.status == 401
    assert f'scope="{SCOPE}"' in ans.headers["WWW-Authenticate"]


async def test_base_accepts_token_and_basic(client: ProxyClient, deployment: Deployment):
    lic = deployment.licenses["valid"]
    assert (await client.request("GET", "/v2/", headers={"Authorization": basic(lic)})).status == 200
    tok = await client.token(lic, SCOPE)
    assert (await client.request("GET", "/v2/", headers={"Authorization": f"Bearer {tok}"})).status == 200


async def test_token_answer_and_claims(client: ProxyClient, deployment: Deployment):
    lic = deployment.licenses["valid"]
    ans = await client.request(
        "GET",
        "/v2/token",
        params={"service": deployment.host, "scope": SCOPE.replace(":pull", ":pull,push")},
        headers={"Authorization": basic(lic, user="someone@example.com")},
    )
    assert ans.status == 200
    body = ans.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert 0 < body["expires_in"] <= 3600
    header = jwt.get_unverified_header(body["token"])
    assert header["kid"]
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    # push was asked for; only pull is granted, and only on that repository.
    assert claims["access"] == [{"type": "repository", "name": SCOPE.split(":")[1], "actions": ["pull"]}]
    assert claims["aud"] == deployment.host
    assert lic not in body["token"] and lic not in str(claims)
    ans = await client.request("GET", MANIFEST, headers={"Authorization": f"Bearer {body['token']}", **ACCEPT})
    assert ans.status == 200


async def test_containerd_oauth_form(client: ProxyClient, deployment: Deployment):
    form = {
        "grant_type": "password",
        "username": "LICENSE_ID",
        "password": deployment.licenses["valid"],
        "service": deployment.host,
        "scope": SCOPE,
        "client_id": "containerd-client",
    }
    ans = await client.request("POST", "/v2/token", data=form)
    assert ans.status == 200
    tok = ans.json()["access_token"]
    assert (await client.request("HEAD", MANIFEST, headers={"Authorization": f"Bearer {tok}", **ACCEPT})).status == 200
    bad = await client.request("POST", "/v2/token", data={**form, "password": "nope-" * 4})
    assert bad.status == 400 and bad.json()["error"] == "invalid_grant"  # RFC 6749 §5.2; containerd falls back to GET
    refresh = await client.request("POST", "/v2/token", data={**form, "grant_type": "refresh_token"})
    assert refresh.status == 400 and refresh.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    ("who", "status", "code"),
    [
        ("unknown", 401, "UNAUTHORIZED"),
        ("expired", 401, "UNAUTHORIZED"),
        ("other-app", 403, "DENIED"),
        ("globex", 403, "DENIED"),
    ],
)
async def test_bad_licenses_are_refused(client: ProxyClient, deployment: Deployment, who: str, status: int, code: str):
    lic = deployment.licenses.get(who, "lic-unknown-0123456789abcdef")
    ans = await client.request(
        "GET", "/v2/token", params={"service": deployment.host, "scope": SCOPE}, headers={"Authorization": basic(lic)}
    )
    if status == 401:
        assert (ans.status, ans.error_code) == (status, code)
    else:
        # A valid license of another app: the token spec grants what it can (here nothing),
        # and the pull with that token is refused as with the license itself.
        assert ans.status == 200
        bearer = {"Authorization": f"Bearer {ans.json()['token']}", **ACCEPT}
        ans = await client.request("GET", MANIFEST, headers=bearer)
        assert (ans.status, ans.error_code) == (status, code)
    ans = await client.request("GET", MANIFEST, headers={"Authorization": basic(lic), **ACCEPT})
    assert (ans.status, ans.error_code) == (status, code)
    # Nothing about why: the message is generic.
    assert "expired" not in ans.body.decode().lower()


async def test_other_app_license_is_fine_for_its_own_app(client: ProxyClient, deployment: Deployment):
    lic = deployment.licenses["other-app"]
    ans = await client.request(
        "GET",
        "/v2/token",
        params={"scope": "repository:proxy/acme-other/other-only/x:pull"},
        headers={"Authorization": basic(lic)},
    )
    assert ans.status == 200


async def test_token_is_bound_to_its_repository_and_host(client: ProxyClient, deployment: Deployment):
    tok = await client.token(deployment.licenses["valid"], SCOPE)
    other = "/v2/proxy/acme/vendor-basic/vendor/docker/manifests/v1"
    ans = await client.request("GET", other, headers={"Authorization": f"Bearer {tok}"})
    assert ans.status == 401
    assert 'error="insufficient_scope"' in ans.headers["WWW-Authenticate"]
    # Presented on another host name this proxy serves, the audience does not match.
    other_host = f"localhost:{deployment.server.port}"
    ans = await client.request("GET", MANIFEST, headers={"Authorization": f"Bearer {tok}", "Host": other_host})
    assert ans.status == 401
    # A host it does not serve at all.
    ans = await client.request("GET", MANIFEST, headers={"Authorization": f"Bearer {tok}", "Host": "evil.example"})
    assert (ans.status, ans.error_code) == (404, "NAME_UNKNOWN")
    # A forged signature.
    head, payload, _sig = tok.split(".")
    ans = await client.request("GET", MANIFEST, headers={"Authorization": f"Bearer {head}.{payload}.AAAA"})
    assert ans.status == 401 and 'error="invalid_token"' in ans.headers["WWW-Authenticate"]


async def test_revoked_license_stops_within_five_seconds(client: ProxyClient, deployment: Deployment):
    lic = deployment.licenses["revoke"]
    tok = await client.token(lic, SCOPE)
    bearer = {"Authorization": f"Bearer {tok}", **ACCEPT}
    assert (await client.request("HEAD", MANIFEST, headers=bearer)).status == 200
    await asyncio.to_thread(deployment.server.set_license_status, lic, "revoked")
    revoked_at = time.monotonic()
    try:
        while True:
            ans = await client.request("HEAD", MANIFEST, headers=bearer)
            if ans.status == 401:
                break
            assert ans.status == 200
            assert time.monotonic() - revoked_at < 6, "a revoked license still pulls after 5 s"
            await asyncio.sleep(0.2)
        assert time.monotonic() - revoked_at <= 5.5
        basic_ans = await client.request("GET", MANIFEST, headers={"Authorization": basic(lic)})
        assert basic_ans.status == 401
        tok_ans = await client.request(
            "GET", "/v2/token", params={"scope": SCOPE}, headers={"Authorization": basic(lic)}
        )
        assert tok_ans.status == 401
    finally:
        await asyncio.to_thread(deployment.server.set_license_status, lic, "active")


@pytest.mark.parametrize(
    "header",
    ["Basic !!!notbase64", "Basic " + "QQ==", "Bearer", "Bearer a b", "Digest abc", "Basic " + "A" * 9000, "ÿ"],
)
async def test_malformed_authorization_is_401(client: ProxyClient, header: str):
    ans = await client.request("GET", MANIFEST, headers={"Authorization": header})
    assert ans.status in (400, 401)
    assert ans.json()["errors"][0]["code"] in ("UNAUTHORIZED", "BAD_REQUEST")
