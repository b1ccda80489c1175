"""The portal's forms: which fields each provider tab asks for, and how a
submitted form becomes the service's camelCase request body.

The provider fields come from the providers' declarations (proxy.upstream.providers);
the secret ones are never put back into a re-rendered form, so a typed password
cannot appear in any page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from proxy.upstream.providers import PROVIDERS, Provider, provider_of
from proxy.upstream.providers.base import Field as Declared


@dataclass(frozen=True)
class Field:
    name: str  # the service's body key
    label: str
    kind: str = "text"  # text | password | textarea | checkbox | select
    required: bool = False
    placeholder: str = ""
    hint: str = ""
    choices: tuple[tuple[str, str], ...] = ()


_SLUG = Field("slug", "Name", placeholder="defaults to the endpoint", hint="Used in pull references.")
_AGAIN = "Changing it needs the secret again: the stored one is sent only where it was given for."


def secret_fields() -> frozenset[str]:
    """Every provider's secret fields: never put back into a re-rendered form."""
    return frozenset(f.api for p in PROVIDERS.values() for f in p.fields if f.secret)


def _field(f: Declared, form: str, hint: str | None = None) -> Field:
    """A declared provider field as one of the portal's forms asks for it."""
    kind = "textarea" if f.multiline else "password" if f.secret else "text"
    required = form == "add" and (f.required or f.form_required)
    return Field(f.api, f.label or f.help, kind, required, f.placeholder, f.hint if hint is None else hint)


def _url_fields(hint: str) -> tuple[Field, ...]:
    return (
        Field("url", "URL", placeholder="https://<endpoint>", hint=hint),
        Field("insecure", "Plain HTTP (insecure)", "checkbox"),
    )


def _add_fields(providers: list[Provider]) -> tuple[Field, ...]:
    """A tab's fields; providers that share a tab are chosen by a select ("kind")."""
    p = providers[0]
    out: list[Field] = []
    if len(providers) > 1:
        choices = tuple((k.name, k.kind_label or k.name) for k in providers)
        out.append(Field("kind", "Service", "select", required=True, choices=choices))
    if p.endpoint_placeholder is not None:
        hint = "The registry host, as written in image references."
        out.append(Field("endpoint", "Endpoint", required=True, placeholder=p.endpoint_placeholder, hint=hint))
    if "add" in p.url_forms:
        out += _url_fields("Where to reach it, when not https://<endpoint>.")
    out += [_field(f, "add") for f in p.fields if "add" in f.forms and f.in_api]
    return (*out, _SLUG)


def tabs() -> dict[str, tuple[str, tuple[Field, ...]]]:
    """The add form's tabs, one per provider title, from the registered providers."""
    by_title: dict[str, list[Provider]] = {}
    for p in PROVIDERS.values():
        by_title.setdefault(p.title, []).append(p)
    return {group[0].name: (title, _add_fields(group)) for title, group in by_title.items()}


def tab_providers(tab: str) -> tuple[str, ...]:
    """The providers a tab creates (the first is the default of its select)."""
    title = PROVIDERS[tab].title
    return tuple(p.name for p in PROVIDERS.values() if p.title == title)


# After every tab's own fields.
COMMON = (
    Field(
        "image",
        "Image to validate with",
        placeholder="vendor/app:1.0",
        hint="Optional: the credentials are checked by fetching this manifest.",
    ),
    Field("skipValidation", "Skip the credentials check", "checkbox"),
)


def credential_fields(provider: str) -> tuple[Field, ...]:
    """What a credentials rotation asks for."""
    declared = provider_of(provider).fields
    return tuple(_field(f, "rotate") for f in declared if "rotate" in f.forms and not f.destination and f.in_api)


def destination_fields(provider: str) -> tuple[Field, ...]:
    """Where the registry is reached, on the edit form; changing any needs the secret again."""
    p = provider_of(provider)
    own = tuple(_field(f, "rotate", _AGAIN) for f in p.fields if "rotate" in f.forms and f.destination and f.in_api)
    return (*(_url_fields(_AGAIN) if "rotate" in p.url_forms else ()), *own)


def edit_values(reg: Mapping[str, Any]) -> dict[str, Any]:
    """The edit form's values from a registry's answer: where it is reached and whose
    credentials it holds (a username, or ECR's access key id); never a secret."""
    values: dict[str, Any] = {f.name: reg.get(f.name) or "" for f in destination_fields(reg["provider"])}
    account = reg.get("username") or ""
    values |= {f.name: account for f in credential_fields(reg["provider"]) if f.kind == "text"}
    return values | {"apps": reg["appIds"], "insecure": reg["insecure"]}


def registry_body(tab: str, form: MultiMapping[Any], fields: tuple[Field, ...]) -> dict[str, Any]:
    """The service body for a create (tab set) or a rotation (tab "")."""
    body: dict[str, Any] = {}
    secrets = secret_fields()
    if tab:
        kinds = tab_providers(tab)
        body["provider"] = form.get("kind") if form.get("kind") in kinds else kinds[0]
    for f in (*fields, *COMMON):
        if f.name == "kind":
            continue
        if f.kind == "checkbox":  # every checkbox passed in is on the submitted form
            body[f.name] = f.name in form
            continue
        raw = form.get(f.name)
        if not isinstance(raw, str):
            continue
        # Passwords are taken as typed; other fields lose stray whitespace.
        value = raw if f.name in secrets else raw.strip()
        if value.strip():
            body[f.name] = value
    apps = [a for a in form.getall("apps", []) if isinstance(a, str)]
    if tab or "apps_present" in form:
        body["appIds"] = apps
    return body


def echo(form: MultiMapping[Any]) -> dict[str, Any]:
    """Submitted values to put back into a form after an error, secrets left out."""
    out: dict[str, Any] = {}
    secrets = secret_fields()
    for key in form:
        if key in secrets or key == "csrf":
            continue
        value = form.getall(key)
        out[key] = (
            [v for v in value if isinstance(v, str)]
            if key == "apps"
            else (value[0] if isinstance(value[0], str) else "")
        )
    return out


def problems_by_field(problems: list[str]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        field, sep, _ = p.partition(":")
        out.setdefault(field if sep else "", []).append(p)
    return out


MAX_PEM = 64 * 1024


def pem_field(form: MultiMapping[Any], name: str) -> str:
    """A PEM from its file upload (`<name>File`) when a file was chosen, else its textarea."""
    upload = form.get(f"{name}File")
    if isinstance(upload, web.FileField) and upload.filename:
        data = upload.file.read(MAX_PEM + 1)
        if data and len(data) <= MAX_PEM:
            return data.decode("utf-8", "replace")
    raw = form.get(name)
    return raw.strip() + "\n" if isinstance(raw, str) and raw.strip() else ""
