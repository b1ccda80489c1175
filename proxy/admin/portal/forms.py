"""The portal's forms: which fields each provider tab asks for, and how a
submitted form becomes the service's camelCase request body.

Secret fields are listed here once (SECRET_FIELDS); they are never put back
into a re-rendered form, so a typed password cannot appear in any page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping


@dataclass(frozen=True)
class Field:
    name: str  # the service's body key
    label: str
    kind: str = "text"  # text | password | textarea | checkbox | select
    required: bool = False
    placeholder: str = ""
    hint: str = ""
    choices: tuple[tuple[str, str], ...] = ()


SECRET_FIELDS = frozenset({"password", "secretAccessKey", "serviceAccountKey"})

_SLUG = Field("slug", "Name", placeholder="defaults to the endpoint", hint="Used in pull references.")
_ENDPOINT = Field("endpoint", "Endpoint", required=True, placeholder="registry.example.com",
                  hint="The registry host, as written in image references.")  # fmt: skip

TABS: dict[str, tuple[str, tuple[Field, ...]]] = {
    "dockerhub": ("DockerHub", (
        Field("username", "Username", required=True),
        Field("password", "Password or access token", "password", required=True),
        _SLUG,
    )),
    "ecr": ("ECR", (
        Field("endpoint", "Endpoint", required=True, placeholder="123456789012.dkr.ecr.us-east-1.amazonaws.com"),
        Field("accessKeyId", "Access key ID", required=True),
        Field("secretAccessKey", "Secret access key", "password", required=True),
        Field("region", "Region", placeholder="from the endpoint"),
        Field("roleArn", "Role ARN", placeholder="arn:aws:iam::123456789012:role/pull",
              hint="Optional: assumed with STS."),
        _SLUG,
    )),
    "gcr": ("GCR / Artifact Registry", (
        Field("kind", "Service", "select", required=True,
              choices=(("gcr", "Container Registry (gcr.io)"), ("gar", "Artifact Registry (*-docker.pkg.dev)"))),
        Field("endpoint", "Endpoint", required=True, placeholder="gcr.io or us-docker.pkg.dev"),
        Field("serviceAccountKey", "Service account key (JSON)", "textarea", required=True),
        _SLUG,
    )),
    "ghcr": ("GHCR", (
        Field("username", "GitHub username", required=True),
        Field("password", "Personal access token", "password", required=True, hint="Needs read:packages."),
        _SLUG,
    )),
    "quay": ("Quay", (
        Field("username", "Username or robot account", required=True),
        Field("password", "Password or robot token", "password", required=True),
        _SLUG,
    )),
    "other": ("Other Registry", (
        _ENDPOINT,
        Field("url", "URL", placeholder="https://<endpoint>", hint="Where to reach it, when not https://<endpoint>."),
        Field("insecure", "Plain HTTP (insecure)", "checkbox"),
        Field("username", "Username", hint="Leave username and password empty for anonymous access."),
        Field("password", "Password", "password"),
        _SLUG,
    )),
}  # fmt: skip

# After every tab's own fields.
COMMON = (
    Field("image", "Image to validate with", placeholder="vendor/app:1.0",
          hint="Optional: the credentials are checked by fetching this manifest."),
    Field("skipValidation", "Skip the credentials check", "checkbox"),
)  # fmt: skip


def credential_fields(provider: str) -> tuple[Field, ...]:
    """What a credentials rotation asks for."""
    if provider == "ecr":
        return (Field("accessKeyId", "Access key ID"), Field("secretAccessKey", "Secret access key", "password"))
    if provider in ("gcr", "gar"):
        return (Field("serviceAccountKey", "Service account key (JSON)", "textarea"),)
    return (Field("username", "Username"), Field("password", "Password or token", "password"))


def destination_fields(provider: str) -> tuple[Field, ...]:
    """Where the registry is reached, on the edit form; changing any needs the secret again."""
    again = "Changing it needs the secret again: the stored one is sent only where it was given for."
    if provider == "ecr":
        return (
            Field("region", "Region", placeholder="from the endpoint", hint=again),
            Field("roleArn", "Role ARN", placeholder="arn:aws:iam::123456789012:role/pull", hint=again),
            Field("apiUrl", "ECR API URL", placeholder="https://api.ecr.<region>.amazonaws.com", hint=again),
        )
    return (
        Field("url", "URL", placeholder="https://<endpoint>", hint=again),
        Field("insecure", "Plain HTTP (insecure)", "checkbox"),
    )


def registry_body(tab: str, form: MultiMapping[Any], fields: tuple[Field, ...]) -> dict[str, Any]:
    """The service body for a create (tab set) or a rotation (tab "")."""
    body: dict[str, Any] = {}
    if tab:
        body["provider"] = (form.get("kind") if form.get("kind") in ("gcr", "gar") else "gcr") if tab == "gcr" else tab
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
        value = raw if f.name in SECRET_FIELDS else raw.strip()
        if value.strip():
            body[f.name] = value
    apps = [a for a in form.getall("apps", []) if isinstance(a, str)]
    if tab or "apps_present" in form:
        body["appIds"] = apps
    return body


def echo(form: MultiMapping[Any]) -> dict[str, Any]:
    """Submitted values to put back into a form after an error, secrets left out."""
    out: dict[str, Any] = {}
    for key in form:
        if key in SECRET_FIELDS or key == "csrf":
            continue
        value = form.getall(key)
        out[key] = [v for v in value if isinstance(v, str)] if key == "apps" else (
            value[0] if isinstance(value[0], str) else "")
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
