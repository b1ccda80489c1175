"""A stored registry secret follows its destination: the update rule, field by field, in process."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.admin.service import _registry_input
from proxy.apierrors import Invalid
from proxy.store.models import Registry

ECR_ENDPOINT = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def _basic() -> Registry:
    return Registry(
        id="r1",
        team_id="t1",
        slug="basic",
        provider="other",
        endpoint="registry.vendor.example",
        url="https://registry.vendor.example",
        insecure=False,
        username="vendor",
        secret_sealed="sealed-password",
    )


def _ecr(**options: str) -> Registry:
    return Registry(
        id="r2",
        team_id="t1",
        slug="ecr",
        provider="ecr",
        endpoint=ECR_ENDPOINT,
        url=f"https://{ECR_ENDPOINT}",
        insecure=False,
        username=None,
        secret_sealed="sealed-key",
        options={"access_key_id": "AKIAEXAMPLE", **options},
    )


def _problems(body: dict[str, Any], current: Registry) -> list[str]:
    with pytest.raises(Invalid) as err:
        _registry_input(body, [], current)
    return err.value.problems


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "https://elsewhere.example"}, "url"),
        ({"url": "http://registry.vendor.example", "insecure": True}, "url"),
        ({"url": "https://registry.vendor.example:8443"}, "url"),
    ],
)
def test_moving_a_password_registry_needs_the_password(body: dict[str, Any], field: str):
    problems = _problems({**body, "skipValidation": True}, _basic())
    assert problems[0].startswith(f"{field}: ") and "secret again (password)" in problems[0]


def test_insecure_alone_is_a_destination_change():
    current = replace(_basic(), url="http://registry.vendor.example", insecure=True)
    problems = _problems({"insecure": False, "url": "https://registry.vendor.example"}, current)
    assert {p.split(":")[0] for p in problems} == {"url", "insecure"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"region": "eu-west-1"}, "region"),
        ({"apiUrl": "https://ecr.attacker.example"}, "apiUrl"),
        ({"roleArn": "arn:aws:iam::123456789012:role/other"}, "roleArn"),
    ],
)
def test_moving_an_ecr_registry_needs_the_secret_key(body: dict[str, Any], field: str):
    problems = _problems(body, _ecr(region="us-east-1"))
    assert [p.split(":")[0] for p in problems] == [field]
    assert "secret again (secretAccessKey)" in problems[0]
    # Given again, it is the owner's choice.
    spec = _registry_input({**body, "secretAccessKey": "typed-again"}, [], _ecr(region="us-east-1"))
    assert spec.secret == "typed-again"


def test_a_service_account_registry_names_its_key():
    current = Registry(
        id="r3",
        team_id="t1",
        slug="gcr",
        provider="gcr",
        endpoint="gcr.io",
        url="https://gcr.io",
        insecure=False,
        username="_json_key",
        secret_sealed="sealed-json",
    )
    problems = _problems({"url": "https://mirror.example"}, current)
    assert "secret again (serviceAccountKey)" in problems[0]


def test_same_destination_or_new_secret_or_nothing_stored_is_fine():
    # The same url (trailing slash aside), apps or username only: the secret stays where it was given.
    assert _registry_input({"url": "https://registry.vendor.example/"}, [], _basic()).secret is None
    assert _registry_input({"username": "other-user"}, [], _basic()).url == "https://registry.vendor.example"
    assert _registry_input({"region": "us-east-1"}, [], _ecr(region="us-east-1")).secret is None
    moved = _registry_input({"url": "https://elsewhere.example", "password": "new"}, [], _basic())
    assert (moved.url, moved.secret) == ("https://elsewhere.example", "new")
    # An anonymous registry holds no secret to replay.
    anon = replace(_basic(), username=None, secret_sealed=None)
    assert _registry_input({"url": "https://elsewhere.example"}, [], anon).url == "https://elsewhere.example"


def test_insecure_alone_on_the_same_url_is_a_destination_change():
    """`insecure` lets the stored secret follow plain-http realms and redirects: turning it on is a move."""
    problems = _problems({"insecure": True}, _basic())
    assert [p.split(":")[0] for p in problems] == ["insecure"] and "secret again (password)" in problems[0]
    # Through the portal's edit form, whose checkbox is sent only when ticked: unticking it is a move too.
    current = replace(_basic(), url="http://registry.vendor.example", insecure=True)
    problems = _problems({"insecure": False, "skipValidation": True}, current)
    assert {p.split(":")[0] for p in problems} >= {"insecure"}


@pytest.mark.parametrize(
    "field, value",
    [("url", "https://vendor:SECRETX@registry.vendor.example"), ("apiUrl", "https://AKIA:SECRETX@ecr.example")],
)
def test_a_url_carrying_credentials_is_refused_without_quoting_it(field: str, value: str):
    """A url is stored and shown as typed (API listings, the portal): a password in it would be shown."""
    current = _ecr(region="us-east-1") if field == "apiUrl" else _basic()
    problems = _problems({field: value, "password" if field == "url" else "secretAccessKey": "typed"}, current)
    assert [p.split(":")[0] for p in problems] == [field]
    assert "SECRETX" not in " ".join(problems) and "credentials" in problems[0]
    create = {"provider": "other", "endpoint": "r.example", "url": value, "username": "u", "password": "p"}
    if field == "url":
        with pytest.raises(Invalid) as err:
            _registry_input(create, [], None)
        assert "SECRETX" not in str(err.value.problems)
