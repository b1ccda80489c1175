"""A registry kind is one declaration: a provider declared only here (a fake Azure
Container Registry) and registered in `PROVIDERS` shows up, with its fields, in the
config file's validation, bootstrap, the vendor API's validation, its OpenAPI
document, the portal's forms and the CLI's flags. All in process."""

from __future__ import annotations

import argparse
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from openapi_spec_validator import validate

from proxy import bootstrap
from proxy.admin.openapi import document
from proxy.admin.portal import forms
from proxy.admin.service import _registry_input, registry_json
from proxy.apierrors import Invalid
from proxy.cli import parser
from proxy.cli.registry import _registry_body
from proxy.config import ConfigError, load
from proxy.secrets import Keyring
from proxy.store import open_store
from proxy.store.models import Registry
from proxy.upstream.providers import PROVIDERS, provider_of
from proxy.upstream.providers.base import SECRET, USERNAME, Field, Provider

TEMPLATES = Path(forms.__file__).parent / "templates"
ENDPOINT = "contoso.azurecr.io"


def _tenant_problem(tenant: str, values: Mapping[str, Any]) -> str | None:
    return None if tenant.replace("-", "").isalnum() else "must be a tenant id (letters, digits and -)"


class ACR(Provider):
    """Azure Container Registry: a service principal's id and secret, in its tenant."""

    name = "acr"
    title = "Azure"
    endpoint_placeholder = "<name>.azurecr.io"
    fields = (
        Field(
            api="username",
            config="username",
            stored=USERNAME,
            help="service principal id",
            label="Client ID",
            flags=("--username",),
            required=True,
        ),
        Field(
            api="password",
            config="password",
            stored=SECRET,
            help="service principal secret",
            label="Client secret",
            flags=("--password",),
            secret=True,
            required=True,
        ),
        Field(
            api="tenant",
            config="tenant",
            stored="tenant",
            help="Entra tenant id",
            label="Tenant",
            flags=("--tenant",),
            destination=True,
            check=_tenant_problem,
        ),
    )

    def endpoint_problem(self, endpoint: str, options: Mapping[str, Any]) -> str | None:
        return None if endpoint.endswith(".azurecr.io") else "Azure Container Registry is <name>.azurecr.io"


@pytest.fixture
def acr() -> Iterator[Provider]:
    provider = ACR()
    PROVIDERS["acr"] = provider  # the one registration point
    try:
        yield provider
    finally:
        del PROVIDERS["acr"]


def _config(tmp_path: Path, registry: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    team = {"name": "azure-team", "apps": [{"slug": "app"}], "registries": [registry]}
    path.write_text(yaml.safe_dump({"store": "sqlite:pullgate.db", "bootstrap": {"teams": [team]}}))
    return path


REGISTRY = {
    "provider": "acr",
    "slug": "acr",
    "endpoint": ENDPOINT,
    "username": "sp-id",
    "password_env": "ACR_SECRET",
    "tenant": "tenant-1",
}
WHERE = re.escape("bootstrap.teams[0].registries[0]")


def test_unregistered_it_is_unknown_everywhere(tmp_path: Path):
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.provider: must be one of"):
        load(_config(tmp_path, REGISTRY), environ={})
    with pytest.raises(Invalid) as err:
        _registry_input({"provider": "acr", "endpoint": ENDPOINT}, [], None)
    assert err.value.problems[0].startswith("provider:")
    assert (
        "acr" not in forms.tabs()
        and "tenant" not in document()["components"]["schemas"]["ExternalRegistryCreate"]["properties"]
    )


def test_config_takes_its_keys_and_names_what_is_missing(acr: Provider, tmp_path: Path):
    cfg = load(_config(tmp_path, REGISTRY), environ={})
    (spec,) = cfg.bootstrap.teams[0].registries
    assert (spec.provider, spec.fields) == (
        "acr",
        {"username": "sp-id", "password_env": "ACR_SECRET", "tenant": "tenant-1"},
    )
    no_secret = {k: v for k, v in REGISTRY.items() if k != "password_env"}
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.password_file: required for acr \(password_file or "):
        load(_config(tmp_path, no_secret), environ={})
    no_user = {k: v for k, v in REGISTRY.items() if k != "username"}
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.username: required for acr"):
        load(_config(tmp_path, no_user), environ={})
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.tennant: unknown key"):
        load(_config(tmp_path, {**REGISTRY, "tennant": "x"}), environ={})
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.access_key_id: unknown key"):  # ECR's, not its
        load(_config(tmp_path, {**REGISTRY, "access_key_id": "x"}), environ={})
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.password_file: give password_file or password_env"):
        load(_config(tmp_path, {**REGISTRY, "password_file": "/x"}), environ={})


async def test_bootstrap_stores_it(acr: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACR_SECRET", "canary-acr-secret")
    cfg = load(_config(tmp_path, REGISTRY), environ={})
    cfg.base_dir = tmp_path
    store = await open_store(cfg.store, tmp_path)
    keyring = Keyring.generate()
    try:
        await bootstrap.apply(cfg, store, keyring)
        team = await store.ensure_team("azure-team")
        (reg,) = await store.registries_of_team(team.id)
        assert (reg.provider, reg.endpoint, reg.url, reg.username) == ("acr", ENDPOINT, f"https://{ENDPOINT}", "sp-id")
        assert reg.options == {"tenant": "tenant-1"}
        assert reg.secret_sealed and keyring.open(reg.secret_sealed, reg.id) == "canary-acr-secret"
        # Its own rules are applied at start, named by key.
        cfg.bootstrap.teams[0].registries[0].fields["tenant"] = "not a tenant!"
        with pytest.raises(ConfigError, match=rf"^{WHERE}\.tenant: must be a tenant id"):
            await bootstrap.apply(cfg, store, keyring)
    finally:
        await store.close()


def _stored() -> Registry:
    return Registry(
        id="r1",
        team_id="t1",
        slug="acr",
        provider="acr",
        endpoint=ENDPOINT,
        url=f"https://{ENDPOINT}",
        insecure=False,
        username="sp-id",
        secret_sealed="sealed",
        options={"tenant": "tenant-1"},
    )


def _problems(body: dict[str, Any], current: Registry | None = None) -> list[str]:
    with pytest.raises(Invalid) as err:
        _registry_input(body, [], current)
    return err.value.problems


def test_the_vendor_api_validates_it(acr: Provider):
    body = {"provider": "acr", "endpoint": ENDPOINT, "username": "sp-id", "password": "s3cret", "tenant": "t-1"}
    spec = _registry_input(body, [], None)
    assert (spec.provider, spec.username, spec.secret, spec.options) == ("acr", "sp-id", "s3cret", {"tenant": "t-1"})
    assert spec.url == f"https://{ENDPOINT}"
    assert _problems({**body, "password": None}) == ["password: required"]
    assert [p.split(":")[0] for p in _problems({**body, "tenant": "no good!"})] == ["tenant"]
    assert _problems({**body, "endpoint": "contoso.example"}) == [
        "endpoint: Azure Container Registry is <name>.azurecr.io"
    ]
    assert _problems({**body, "tenantt": "x"}) == ["tenantt: unknown field"]
    # Its destination field: moving the stored secret needs it again, named by its secret field.
    moved = _problems({"tenant": "tenant-2"}, _stored())
    assert len(moved) == 1 and moved[0].startswith("tenant: ") and "secret again (password)" in moved[0]
    assert _registry_input({"tenant": "tenant-2", "password": "again"}, [], _stored()).options == {"tenant": "tenant-2"}
    assert _registry_input({"appIds": []}, [], _stored()).secret is None  # nothing to give again


def test_the_openapi_document_lists_its_fields(acr: Provider):
    doc = document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    props = schemas["ExternalRegistryCreate"]["properties"]
    assert "acr" in props["provider"]["enum"] and "acr" in schemas["ExternalRegistry"]["properties"]["provider"]["enum"]
    assert props["tenant"] == {"type": "string", "description": "acr: Entra tenant id"}
    # Answers show it (a destination, never a secret), and the answer's schema lists it.
    shown = registry_json(_stored(), {}, None)
    assert (shown["tenant"], shown["username"], shown["authType"]) == ("tenant-1", "sp-id", "password")
    assert set(shown) <= set(schemas["ExternalRegistry"]["properties"])
    assert "acr: service principal secret" in props["password"]["description"] and props["password"]["writeOnly"]


def _render(template: str, **context: Any) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    for name in ("when", "size", "short"):
        env.filters[name] = str
    base = {
        "prefix": "",
        "csrf": "c",
        "team": None,
        "flash": None,
        "nav": "",
        "apps": [],
        "values": {},
        "errors": {},
        "common": forms.COMMON,
    }
    return env.get_template(template).render({**base, **context})


def test_the_portal_renders_its_fields(acr: Provider):
    tabs = forms.tabs()
    title, fields = tabs["acr"]
    assert title == "Azure"
    assert [f.name for f in fields] == ["endpoint", "url", "insecure", "username", "password", "tenant", "slug"]
    html = _render(
        "images.html",
        registries=[],
        references=[],
        tabs=tabs,
        tab="acr",
        fields=fields,
        test=None,
        proxy_host="proxy.test",
        test_choice="",
    )
    assert 'href="/images?provider=acr#add"' in html and ">Azure</a>" in html
    for name in ("endpoint", "username", "password", "tenant"):
        assert f'name="{name}"' in html
    assert "Client secret" in html and 'type="password" name="password"' in html
    assert 'placeholder="&lt;name&gt;.azurecr.io"' in html
    # The rotation form: the secret, and its destination field with the "give the secret again" note.
    edit = forms.credential_fields("acr") + forms.destination_fields("acr")
    assert [f.name for f in edit] == ["username", "password", "url", "insecure", "tenant"]
    reg = {
        "slug": "acr",
        "provider": "acr",
        "endpoint": ENDPOINT,
        "url": f"https://{ENDPOINT}",
        "insecure": False,
        "authType": "password",
        "appSlugs": [],
        "lastUsedAt": None,
    }
    values = forms.edit_values(registry_json(_stored(), {}, None))
    assert {k: values[k] for k in ("username", "tenant", "url")} == {
        "username": "sp-id",
        "tenant": "tenant-1",
        "url": f"https://{ENDPOINT}",
    }
    assert "password" not in values
    page = _render("registry.html", reg=reg, fields=edit, values=values)
    assert 'name="tenant" value="tenant-1"' in page and "needs the secret again" in page
    # A typed secret is never echoed back.
    assert "password" in forms.secret_fields()
    body = forms.registry_body("acr", _multidict(tenant=" t-1 ", password=" pw ", endpoint=ENDPOINT), fields)
    assert (body["provider"], body["tenant"], body["password"]) == ("acr", "t-1", " pw ")


def _multidict(**values: str) -> Any:
    from multidict import MultiDict

    return MultiDict(values)


def test_the_cli_has_registry_add_acr(acr: Provider, monkeypatch: pytest.MonkeyPatch):
    args = parser().parse_args(
        [
            "registry",
            "add",
            "acr",
            "--endpoint",
            ENDPOINT,
            "--username",
            "sp-id",
            "--password-stdin",
            "--tenant",
            "tenant-1",
        ]
    )
    assert args.provider == "acr"
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    body = _registry_body(args, "acr", creating=True)
    assert body == {"username": "sp-id", "tenant": "tenant-1", "password": "from-stdin"}
    assert _registry_input({"provider": "acr", "endpoint": ENDPOINT, **body}, [], None).options == {
        "tenant": "tenant-1"
    }
    with pytest.raises(SystemExit):  # another provider's flag is not its
        parser().parse_args(["registry", "add", "acr", "--accesskeyid", "AKIA"])
    help_text = _help(["registry", "add", "acr"])
    assert "--tenant" in help_text and "Entra tenant id" in help_text and "--password-stdin" in help_text
    assert "acr" in _help(["registry", "add"])
    update = parser().parse_args(["registry", "update", "acr", "--tenant", "tenant-2"])
    assert _registry_body(update, "acr", creating=False) == {"tenant": "tenant-2"}


def _help(argv: list[str]) -> str:
    p = parser()
    for name in argv:
        p = _subparser(p, name)
    return p.format_help()


def _subparser(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def test_a_provider_is_found_by_name(acr: Provider):
    assert provider_of("acr") is acr
    assert provider_of("nope").name == "other"
