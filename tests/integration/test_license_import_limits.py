"""KOTS license import (`POST /vendor/v3/license/import`) is no oracle of other
teams' licenses, and is throttled per team (`limits.license_imports_per_minute`)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.pullgate import Pullgate
from tests.support.vendor import VendorClient, VendorEnv, check_shape, kots_license, public_pem, rsa_key


async def test_a_license_held_by_another_team_is_refused_like_a_wrong_signature(vendor_env: VendorEnv):
    """A team signing licenses with its own key cannot learn which license IDs exist elsewhere."""
    alpha, beta = VendorClient(vendor_env, "alpha"), VendorClient(vendor_env, "beta")
    suffix = secrets.token_hex(4)
    alpha_key, beta_key = rsa_key(), rsa_key()
    alpha_app, beta_app = f"oracle-a-{suffix}", f"oracle-b-{suffix}"
    assert (await beta.call("POST", "/app", {"slug": beta_app, "kotsPublicKey": public_pem(beta_key)})).status == 201
    assert (await alpha.call("POST", "/app", {"slug": alpha_app, "kotsPublicKey": public_pem(alpha_key)})).status == 201
    held = "oracleheld" + secrets.token_hex(12)
    vendor_env.canaries.append(held)
    text = kots_license(beta_key, "v1beta2", license_id=held, app_slug=beta_app, name="Held")
    assert (await beta.call("POST", "/license/import", {"license": text})).status == 201

    # Team alpha signs a license with the same ID under its own, valid key...
    probe = kots_license(alpha_key, "v1beta2", license_id=held, app_slug=alpha_app, name="Probe")
    taken = await alpha.call("POST", "/license/import", {"license": probe})
    # ... and a fresh ID under a key that is not its app's.
    fresh = "oraclefresh" + secrets.token_hex(12)
    forged = kots_license(rsa_key(), "v1beta2", license_id=fresh, app_slug=alpha_app, name="Probe")
    wrong = await alpha.call("POST", "/license/import", {"license": forged})
    assert wrong.status == 400 and "signature" in wrong.body["message"]
    assert (taken.status, taken.body) == (wrong.status, wrong.body)

    # Nothing changed hands.
    mine = (await alpha.call("GET", "/customers")).body["customers"]
    assert [c for c in mine if c["appSlug"] == alpha_app] == []
    theirs = (await beta.call("GET", "/customers")).body["customers"]
    assert [c["name"] for c in theirs if c["appSlug"] == beta_app] == ["Held"]


# --- throttling ---------------------------------------------------------------------------

PER_MINUTE = 3
TOKENS = {"one": "pgt_imports_one_" + "a" * 24, "two": "pgt_imports_two_" + "b" * 24}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pullgate]:
    teams = [
        {"name": name, "api_tokens": [{"token_env": f"IMPORT_TOKEN_{name.upper()}"}], "apps": [{"slug": f"imp-{name}"}]}
        for name in TOKENS
    ]
    env = {f"IMPORT_TOKEN_{name.upper()}": token for name, token in TOKENS.items()}
    settings = {"limits": {"license_imports_per_minute": PER_MINUTE}}
    srv = Pullgate(tmp_path_factory.mktemp("imports"), teams, env=env, settings=settings).start()
    yield srv
    srv.stop()


async def _call(server: Pullgate, team: str, method: str, path: str, body: object) -> tuple[int, dict, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, f"{server.admin_url}/vendor/v3{path}", json=body, headers={"Authorization": TOKENS[team]}
        ) as r,
    ):
        data = await r.json()
        check_shape(method, f"/vendor/v3{path}", r.status, data)
        return r.status, data, dict(r.headers)


async def test_license_imports_are_throttled_per_team(server: Pullgate):
    key = rsa_key()
    status, _, _ = await _call(server, "one", "PATCH", "/app/imp-one", {"kotsPublicKey": public_pem(key)})
    assert status == 200
    statuses = []
    for i in range(PER_MINUTE + 2):
        # Good and bad licenses alike spend the team's budget.
        signer = key if i % 2 == 0 else rsa_key()
        lic_id = f"throttled{i}" + secrets.token_hex(10)
        text = kots_license(signer, "v1beta2", license_id=lic_id, app_slug="imp-one", name=f"T{i}")
        status, body, headers = await _call(server, "one", "POST", "/license/import", {"license": text})
        statuses.append(status)
    assert statuses[:PER_MINUTE] == [201, 400, 201]
    assert statuses[PER_MINUTE:] == [429, 429]
    assert int(headers["Retry-After"]) >= 1 and "too many license imports" in body["message"]
    # Another team has its own budget.
    status, body, _ = await _call(server, "two", "POST", "/license/import", {"license": "kind: Secret"})
    assert status == 400, body
    async with aiohttp.ClientSession() as s, s.get(server.admin_url + "/metrics") as r:
        assert "pullgate_license_imports_throttled_total 2.0" in await r.text()
