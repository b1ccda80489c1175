"""Vendor-side test support: a pullgate with two teams and API tokens, an API
client that checks every answer against the OpenAPI document and for canary
secrets, and a maker of signed KOTS licenses."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jsonschema import Draft202012Validator
from referencing import Registry as SchemaRegistry
from referencing.jsonschema import DRAFT202012
from yarl import URL

from proxy.admin.openapi import document
from tests.support.canaries import assert_no_secrets
from tests.support.dns_server import LoopbackDNS
from tests.support.faults import Sentinel
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry


@dataclass
class VendorEnv:
    server: Pullgate
    tokens: dict[str, str]  # team -> API token
    licenses: dict[str, str]  # bootstrap customer -> license ID
    basic: Registry
    anon: Registry
    sentinel: Sentinel
    dns: LoopbackDNS
    canaries: list[str] = field(default_factory=list)
    exercised: set[tuple[str, str, int]] = field(default_factory=set)  # (method, path template, status)

    @property
    def admin(self) -> str:
        return self.server.admin_url

    def assert_clean(self, text: str | bytes, where: str) -> None:
        assert_no_secrets(text, self.canaries, where)


@pytest.fixture(scope="session")
def vendor_env(
    tmp_path_factory: pytest.TempPathFactory, upstream_basic: Registry, upstream_anon: Registry
) -> Iterator[VendorEnv]:
    tokens = {"alpha": "pgt_alpha_" + secrets.token_hex(16), "beta": "pgt_beta_" + secrets.token_hex(16)}
    licenses = {"beta-cust": "lic-beta-" + secrets.token_hex(16)}
    sentinel = Sentinel()
    dns = LoopbackDNS()
    env = {"VT_ALPHA": tokens["alpha"], "VT_BETA": tokens["beta"], "VT_LIC_BETA": licenses["beta-cust"]}
    teams = [
        {"name": "alpha", "api_tokens": [{"token_env": "VT_ALPHA"}], "apps": [{"slug": "alpha-app"}]},
        {
            "name": "beta",
            "api_tokens": [{"token_env": "VT_BETA"}],
            "apps": [{"slug": "beta-app"}],
            "registries": [
                {
                    "slug": "beta-anon",
                    "provider": "other",
                    "endpoint": "registry.beta.test",
                    "url": upstream_anon.url,
                    "insecure": True,
                }
            ],
            "customers": [{"name": "Beta Customer", "app": "beta-app", "license_id_env": "VT_LIC_BETA"}],
        },
    ]
    server = Pullgate(
        tmp_path_factory.mktemp("vendor"),
        teams,
        env=env,
        settings={"pulllog": {"flush_seconds": 0.05}, "domains": {"resolver": [dns.nameserver]}},
        name="pullgate-vendor",
    ).start()
    ve = VendorEnv(
        server,
        tokens,
        licenses,
        upstream_basic,
        upstream_anon,
        sentinel,
        dns,
        canaries=[p for p in (upstream_basic.password,) if p] + list(licenses.values()),
    )
    try:
        yield ve
    finally:
        server.stop()
        sentinel.stop()
        dns.stop()
    ve.assert_clean(server.log_text(), "the vendor server's log")


# --- the API client, checking shapes and secrets --------------------------------------

_DOC = document()
_SCHEMAS = SchemaRegistry().with_resource("urn:pullgate-openapi", DRAFT202012.create_resource(_DOC))


def _template(path: str) -> str | None:
    """The documented path template for a concrete /vendor/v3 path."""
    rel = path.removeprefix("/vendor/v3")
    parts = rel.split("/")
    candidates = []
    for tmpl in _DOC["paths"]:
        tparts = tmpl.split("/")
        if len(tparts) == len(parts) and all(t.startswith("{") or t == p for t, p in zip(tparts, parts, strict=True)):
            candidates.append(tmpl)
    # Fixed segments win over parameters (/external_registry/test over /{slug}).
    candidates.sort(key=lambda t: t.count("{"))
    return candidates[0] if candidates else None


CLI_TAG = "replicated CLI"  # operations shaped for the `replicated` CLI (tests/support/replicated_cli.py)


def documented_operations(cli: bool) -> set[tuple[str, str]]:
    """(METHOD, path template) of the documented operations: the CLI-shaped ones, or the others."""
    return {
        (m.upper(), p)
        for p, item in _DOC["paths"].items()
        for m, op in item.items()
        if m != "parameters" and (CLI_TAG in op.get("tags", ())) == cli
    }


def check_request(method: str, path: str, body: Any) -> None:
    """A request body must match the documented requestBody schema of its operation."""
    tmpl = _template(path)
    assert tmpl is not None, f"{path} is not documented"
    op = _DOC["paths"][tmpl].get(method.lower())
    assert op is not None, f"{method} {tmpl} is not documented"
    content = op.get("requestBody", {}).get("content")
    if content is None:
        assert body is None, f"{method} {tmpl} takes no body"
        return
    Draft202012Validator(_absolute(content["application/json"]["schema"]), registry=_SCHEMAS).validate(body)


def check_shape(method: str, path: str, status: int, body: Any) -> tuple[str, str, int]:
    tmpl = _template(path)
    assert tmpl is not None, f"{path} is not documented"
    op = _DOC["paths"][tmpl].get(method.lower())
    assert op is not None, f"{method} {tmpl} is not documented"
    resp = op["responses"].get(str(status))
    assert resp is not None, f"{method} {tmpl} answered {status}, which is not documented"
    content = resp.get("content")
    if content is None:
        assert body in (None, b"", ""), f"{method} {tmpl} {status} should have no body"
    else:
        schema = _absolute(content["application/json"]["schema"])
        Draft202012Validator(schema, registry=_SCHEMAS).validate(body)
    return method.upper(), tmpl, status


def _absolute(schema: Any) -> Any:
    """Point the document's local $refs at the registered resource."""
    if isinstance(schema, dict):
        return {
            k: ("urn:pullgate-openapi" + v if k == "$ref" and v.startswith("#") else _absolute(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute(v) for v in schema]
    return schema


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any


class VendorClient:
    def __init__(self, env: VendorEnv, team: str | None = "alpha") -> None:
        self.env = env
        self.token = env.tokens[team] if team else None

    def as_team(self, team: str | None) -> VendorClient:
        return VendorClient(self.env, team)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if self.token and "Authorization" not in hdrs:
            hdrs["Authorization"] = self.token
        url = URL(self.env.admin + "/vendor/v3" + path)
        if params:
            url = url.with_query(params)
        async with aiohttp.ClientSession() as s:
            kw: dict[str, Any] = {"headers": hdrs}
            if raw is not None:
                kw["data"] = raw
            elif body is not None:
                kw["json"] = body
            async with s.request(method, url, **kw) as r:
                data = await r.read()
                status, resp_headers = r.status, r.headers
        where = f"{method} {path}"
        self.env.assert_clean(data, f"the body of {where}")
        self.env.assert_clean("\n".join(f"{k}: {v}" for k, v in resp_headers.items()), f"headers of {where}")
        parsed = json.loads(data) if data else None
        if status < 500:
            self.env.exercised.add(check_shape(method, url.path, status, parsed))
        return Reply(status, parsed, resp_headers)


# --- KOTS licenses --------------------------------------------------------------------


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def kots_license(
    key: rsa.RSAPrivateKey,
    version: str,
    *,
    license_id: str,
    app_slug: str,
    name: str,
    email: str = "ops@customer.test",
    expires_at: str = "",
    license_type: str = "prod",
    tamper: dict[str, Any] | None = None,
) -> str:
    """A License signed as KOTS signs: RSA-PSS (MD5 for v1beta1, SHA-256 for v1beta2)
    over licenseData, wrapped in innerSignature and the outer signature JSON.
    `tamper` changes spec fields of the readable copy after signing."""
    spec: dict[str, Any] = {
        "appSlug": app_slug,
        "channelName": "Stable",
        "customerName": name,
        "customerEmail": email,
        "licenseID": license_id,
        "licenseType": license_type,
        "licenseSequence": 1,
        "entitlements": {"expires_at": {"title": "Expiration", "value": expires_at, "valueType": "String"}},
    }
    doc = {"apiVersion": f"kots.io/{version}", "kind": "License", "metadata": {"name": app_slug}, "spec": spec}
    data = json.dumps(doc).encode()
    algorithm = hashes.MD5() if version == "v1beta1" else hashes.SHA256()  # noqa: S303 - as KOTS v1beta1 signs
    sig = key.sign(data, padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.MAX_LENGTH), algorithm)
    inner = {
        "licenseSignature": base64.b64encode(sig).decode(),
        "publicKey": public_pem(key),
        "keySignature": base64.b64encode(b'{"signature":"","globalKeyId":"test"}').decode(),
    }
    outer = {
        "licenseData": base64.b64encode(data).decode(),
        "innerSignature": base64.b64encode(json.dumps(inner).encode()).decode(),
    }
    readable = json.loads(json.dumps(doc))
    readable["spec"].update(tamper or {})
    readable["spec"]["signature"] = base64.b64encode(json.dumps(outer).encode()).decode()
    return yaml.safe_dump(readable, sort_keys=False)
