"""Provider modules on their own: validation, names, ECR token lifetimes."""

from __future__ import annotations

import json

import pytest

from proxy.store.models import Registry
from proxy.upstream.providers import provider_of
from proxy.upstream.providers.ecr import MIN_LIFETIME, lifetime, region_of

KEY = json.dumps({"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com", "private_key": "SECRETX"})


@pytest.mark.parametrize(
    ("provider", "endpoint", "username", "secret", "options", "problems"),
    [
        ("dockerhub", "docker.io", "u", "p", {}, []),
        ("dockerhub", "index.docker.io", None, None, {}, []),
        ("dockerhub", "quay.io", "u", "p", {}, ["endpoint"]),
        ("ghcr", "ghcr.io", "u", "p", {}, []),
        ("ghcr", "ghcr.io", None, "p", {}, ["username"]),
        ("quay", "quay.io", "org+robot", "tok", {}, []),
        ("gcr", "gcr.io", "_json_key", KEY, {}, []),
        ("gcr", "eu.gcr.io", "oauth2accesstoken", "ya29.x", {}, []),
        ("gcr", "gcr.io", "_json_key", "not json SECRETX", {}, ["password"]),
        ("gcr", "gcr.io", "_json_key", json.dumps({"private_key": "SECRETX"}), {}, ["password"]),
        ("gcr", "evil.example", "bob", None, {}, ["endpoint", "username", "password"]),
        ("gar", "us-docker.pkg.dev", "_json_key", KEY, {}, []),
        ("gar", "gcr.io", "_json_key", KEY, {}, ["endpoint"]),
        ("ecr", "123456789012.dkr.ecr.us-east-1.amazonaws.com", None, "s", {"access_key_id": "AKIA"}, []),
        ("ecr", "registry.example", None, "s", {"access_key_id": "AKIA"}, ["endpoint"]),
        ("ecr", "registry.example", None, "s", {"access_key_id": "AKIA", "region": "eu-west-1"}, []),
        # The region names the host the signed API call goes to (api.ecr.<region>.amazonaws.com).
        ("ecr", "registry.example", None, "s", {"access_key_id": "AKIA", "region": "evil.example/#"}, ["region"]),
        ("ecr", "registry.example", None, "s", {"access_key_id": "AKIA", "region": "us-gov-west-1"}, []),
        ("ecr", "123456789012.dkr.ecr.us-east-1.amazonaws.com", None, None, {}, ["access_key_id", "secret_access_key"]),
        (
            "ecr",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            None,
            "s",
            {"access_key_id": "A", "role_arn": "nope"},
            ["role_arn"],
        ),
        ("other", "registry.example", "u", "p", {}, []),
    ],
)
def test_validation_names_fields_and_never_quotes_secrets(provider, endpoint, username, secret, options, problems):
    found = provider_of(provider).validate(endpoint, username, secret, options)
    assert [p.split(":")[0] for p in found] == problems
    assert not any("SECRETX" in p for p in found)


def test_repository_names_and_default_urls():
    assert provider_of("dockerhub").upstream_repo("redis") == "library/redis"
    assert provider_of("dockerhub").upstream_repo("bitnami/redis") == "bitnami/redis"
    assert provider_of("ghcr").upstream_repo("redis") == "redis"
    assert provider_of("dockerhub").default_url("docker.io") == "https://registry-1.docker.io"
    assert provider_of("quay").default_url("quay.io") == "https://quay.io"
    assert provider_of("gar").default_url("us-docker.pkg.dev") == "https://us-docker.pkg.dev"
    assert provider_of("unknown").name == "other"


def _reg(endpoint: str, **options: str) -> Registry:
    return Registry(
        id="r",
        team_id="t",
        slug="s",
        provider="ecr",
        endpoint=endpoint,
        url="https://x",
        insecure=False,
        username=None,
        secret_sealed=None,
        options=options,
    )


def test_ecr_region_and_token_lifetime():
    assert region_of(_reg("123456789012.dkr.ecr.ap-southeast-2.amazonaws.com")) == "ap-southeast-2"
    assert region_of(_reg("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn")) == "cn-north-1"
    assert region_of(_reg("vpce.example", region="eu-west-1")) == "eu-west-1"
    assert region_of(_reg("vpce.example")) is None
    now = 1_800_000_000.0
    assert lifetime(now + 12 * 3600, now) == 11 * 3600  # until one hour before expiry
    assert lifetime("2027-01-15T08:00:00Z", 1_799_999_999.0) > 0
    assert lifetime(now + 1200, now) == 600  # short-lived: half its remaining life
    assert lifetime(now - 10, now) == MIN_LIFETIME  # our clock is off; do not refetch in a loop
    assert lifetime("garbage", now) == MIN_LIFETIME


def test_token_lifetime_honours_issued_at():
    import json as _json

    from proxy.upstream.bearer import parse_token_response

    now = 1_800_000_000.0

    def answer(**fields: object) -> bytes:
        return _json.dumps({"token": "t", **fields}).encode()

    assert parse_token_response(answer(expires_in=300), "s", now) == ("t", 300.0)
    assert parse_token_response(answer(), "s", now) == ("t", 60.0)  # the spec's default
    import datetime as _dt

    issued = _dt.datetime.fromtimestamp(now - 40, _dt.UTC).isoformat().replace("+00:00", "Z")
    assert parse_token_response(answer(expires_in=300, issued_at=issued), "s", now) == ("t", 260.0)
    skewed = _dt.datetime.fromtimestamp(now - 4000, _dt.UTC).isoformat()
    assert parse_token_response(answer(expires_in=300, issued_at=skewed), "s", now) == ("t", 300.0)
    future = _dt.datetime.fromtimestamp(now + 30, _dt.UTC).isoformat()
    assert parse_token_response(answer(expires_in=300, issued_at=future), "s", now) == ("t", 300.0)
    assert parse_token_response(answer(expires_in=300, issued_at="yesterday"), "s", now) == ("t", 300.0)
