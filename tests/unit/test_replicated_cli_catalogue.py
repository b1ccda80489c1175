"""The `replicated` CLI request catalogue against the OpenAPI document, Go's decoding
rules as the catalogue applies them, and the reading of the CLI's customer fields."""

from __future__ import annotations

import json

import jsonschema
import pytest

from proxy.admin import dialect
from proxy.admin.openapi import document
from tests.support import replicated_cli as cli
from tests.support.vendor import _template, check_request, documented_operations

SAMPLE = {
    "name": "Acme",
    "endpoint": "registry.example:5000",
    "endpoint_q": "registry.example%3A5000",
    "slug_q": "registry.example%3A5000",
    "username": "u",
    "password": "p",
    "skip": True,
    "image": "vendor/api:1",
    "appId": "0123456789abcdef0123456789abcdef",
    "page": 0,
    "offset": 0,
    "customerId": "c1",
    "channel_q": "Stable",
    "channelId": "0123456789abcdef0123456789abcdef-stable",
    "customId": "crm-1",
    "type": "trial",
    "expiresAt": "2031-01-01T00:00:00Z",
    "email": "a@b.test",
}


@pytest.mark.parametrize("req", cli.CATALOGUE, ids=lambda r: f"{r.method} {r.path}")
def test_each_request_is_documented_with_its_status_and_body(req: cli.CliRequest):
    path, body = req.fill(**SAMPLE)
    assert "{" not in path and "{" not in json.dumps(body).replace('{"', ""), "a placeholder was left unfilled"
    concrete = "/vendor" + path.split("?")[0]
    tmpl = _template(concrete)
    assert tmpl is not None, f"{path} is not documented"
    op = document()["paths"][tmpl][req.method.lower()]
    assert str(req.status) in op["responses"], f"{req.method} {tmpl} does not document {req.status}"
    check_request(req.method, concrete, body)
    documented_query = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    sent_query = {kv.split("=")[0] for kv in path.partition("?")[2].split("&") if kv}
    assert sent_query <= documented_query, sent_query - documented_query


def test_every_cli_shaped_operation_is_in_the_catalogue():
    sent = {(r.method, _template("/vendor" + r.fill(**SAMPLE)[0].split("?")[0])) for r in cli.CATALOGUE}
    assert documented_operations(cli=True) - sent == set()


def test_a_request_outside_the_document_is_caught():
    _, body = cli.CUSTOMER_CREATE.fill(**SAMPLE)
    with pytest.raises(jsonschema.ValidationError):
        check_request("POST", "/vendor/v3/customer", {**body, "seats": 5})
    with pytest.raises(jsonschema.ValidationError):
        check_request("POST", "/vendor/v3/customer", {**body, "entitlementValues": [{"name": "a", "value": "b"}]})


def test_go_decoding_rules():
    log = cli.REGISTRY_LOGS.reads
    assert log is not None
    good = {"logs": [{"createdAt": "t", "action": "manifest", "statusCode": 200, "isSuccess": True, "image": None}]}
    assert cli.decode(log, good) == []
    assert cli.decode(log, {"logs": None}) == []  # a null slice is an empty one
    wrong = {"logs": [{"createdAt": "t", "action": "manifest", "statusCode": "200", "isSuccess": 1}]}
    assert cli.decode(log, wrong) == [
        "answer.logs[0].statusCode: integer expected, got '200'",
        "answer.logs[0].isSuccess: boolean expected, got 1",
    ]
    # Keys match case-insensitively, as encoding/json matches them.
    assert cli.decode(log, {"LOGS": [{"CreatedAt": "t", "action": "x", "STATUSCODE": True}]}) == [
        "answer.logs[0].statusCode: integer expected, got True"
    ]
    # What a command needs must be there; a time must be RFC 3339.
    customer = cli.CUSTOMER_GET.reads
    assert customer is not None
    assert "answer.customer.installationId: the CLI needs it" in cli.decode(
        customer, {"customer": {"id": "c", "name": "n", "type": "dev", "channels": [{"id": "x", "name": "S"}]}}
    )
    assert cli.decode(
        cli.APP_CREATE.reads or cli.STR, {"app": {"id": "a", "name": "n", "slug": "s", "created": "2026-01-01 10:00"}}
    ) == ["answer.app.created: RFC 3339 time expected, got '2026-01-01 10:00'"]


def test_customer_fields_in_both_spellings():
    cli_body = {
        "name": "N",
        "app_id": "a1",
        "type": "trial",
        "expires_at": "",
        "custom_id": "",
        "channels": [{"channel_id": "c1", "pinned_channel_sequence": None, "is_default_for_customer": True}],
        "entitlementValues": None,
        **cli.CUSTOMER_FLAGS,
    }
    got = dialect.read_customer(cli_body, set(dialect.ALIASES))
    assert got.problems == []
    assert got.values == {"name": "N", "app": "a1", "licenseType": "trial", "expiresAt": "", "customId": None}
    assert [(c.ref, c.default) for c in got.channels or []] == [("c1", True)]
    assert got.rename(["licenseType: one of prod"]) == ["type: one of prod"]
    mixed = dialect.read_customer({"type": "dev", "licenseType": "dev", "channels": "Stable"}, set(dialect.ALIASES))
    assert mixed.problems == [
        "licenseType: give type or licenseType, not both",
        "channels: must be a list of channel names or ids",
    ]
    # pullgate's own spelling: channel names; the update takes no app and no CLI flags.
    native = dialect.read_customer({"appSlug": "x", "channels": ["Beta", "Stable"]}, set(dialect.ALIASES))
    assert [c.ref for c in native.channels or []] == ["Beta", "Stable"] and native.problems == []
    update = dialect.read_customer({"appSlug": "x", "is_airgap_enabled": True}, set(dialect.ALIASES) - {"app"})
    assert update.problems == ["appSlug: unknown field", "is_airgap_enabled: unknown field"]
    too_long = dialect.read_customer({"custom_id": "x" * 201}, set(dialect.ALIASES))
    assert too_long.problems == ["custom_id: must be a string (at most 200 characters)"]


def test_search_reading():
    search, problems = dialect.read_search(
        {"app_id": "a", "offset": 100, "page_size": 100, "query": "name:Acme Inc", "include_archived": False}
    )
    assert problems == [] and search is not None
    assert (search.offset, search.field, search.text, search.types) == (100, "name", "acme inc", None)
    assert search.states == {"active", "revoked", "expired"}
    _, problems = dialect.read_search({"offset": -1, "page_size": 1000, "query": "colour:red", "x": 1})
    assert problems == [
        "x: unknown field",
        "app_id: required, the app id or slug",
        "offset: a whole number from 0",
        "page_size: a whole number from 1 to 100",
        "query: cannot search by 'colour' (name:, email: or customId:)",
    ]
