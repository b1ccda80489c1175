"""What every provider module supplies: where the registry lives, how repository
names map, what credentials it needs, and how to turn them into the username and
password its auth challenge wants. The challenge/token/streaming machinery stays
shared (proxy.upstream.auth, proxy.upstream.client)."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.secrets import Keyring
from proxy.store.models import Registry
from proxy.upstream.flow import SYSTEM_CLOCK, Clock, FlowRunner
from proxy.upstream.tokens import TokenCache


@dataclass(frozen=True)
class RegistryCredentials:
    username: str | None
    password: str | None
    # Monotonic time after which these must be fetched again (ECR tokens expire).
    expires_at: float = math.inf

    def __repr__(self) -> str:
        return f"RegistryCredentials(username={self.username!r}, password=***)"

    @property
    def present(self) -> bool:
        return bool(self.username or self.password)

    def basic_header(self) -> str:
        raw = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class CredentialContext:
    """What a provider may use to obtain credentials: it sends nothing itself,
    its flows (proxy.upstream.flow) go through `run`."""

    keyring: Keyring
    tokens: TokenCache
    run: FlowRunner
    clock: Clock = SYSTEM_CLOCK


# Where a registry record keeps a field's value: its username, its sealed secret,
# or (any other name) that key of its options.
USERNAME = "username"
SECRET = "secret"


@dataclass(frozen=True)
class Field:
    """One credential or destination field of a provider, declared once: the config
    file, bootstrap, the vendor API, its OpenAPI document, the portal's forms and the
    CLI's flags are all derived from these declarations."""

    api: str  # the vendor API's name, e.g. secretAccessKey
    config: str | None  # the config key (a secret: <config>_file or <config>_env); None: API only
    stored: str  # USERNAME, SECRET, or the options key
    help: str  # CLI help, OpenAPI description, portal hint
    label: str = ""  # the portal's label (default: the help)
    hint: str = ""  # the portal's note under it
    flags: tuple[str, ...] = ()  # CLI flags; a secret's also come as <flag>-stdin
    secret: bool = False
    required: bool = False
    # Where the stored secret is sent: changing it needs the secret again.
    destination: bool = False
    url: bool = False  # a URL the egress policy judges before anything is sent there
    max_length: int = 4096
    aliases: tuple[str, ...] = ()  # other API names accepted for it
    # Given, it sets these stored values too (a service-account key means username _json_key).
    implies: tuple[tuple[str, str], ...] = ()
    # Why a value is unusable, never quoting it; gets the record's other values (by `stored`).
    check: Callable[[str, Mapping[str, Any]], str | None] | None = None
    forms: tuple[str, ...] = ("add", "rotate")  # the portal forms that ask for it
    in_api: bool = True  # False: the config file only (e.g. ECR's sts_url)
    form_required: bool = False  # the portal's add form asks for it even when not `required`
    placeholder: str = ""
    multiline: bool = False  # a textarea; from a CLI flag, a file's path
    choices: tuple[str, ...] = ()  # the values allowed (e.g. GCR usernames)


def problems_of(
    fields: tuple[Field, ...], values: Mapping[str, Any], has_secret: bool, name: Callable[[Field], str]
) -> list[str]:
    """Required fields that are missing and declared checks that fail, named by `name`.
    `values` holds the record's values by `stored` (SECRET only when newly given)."""
    problems = []
    secret_fields = [f for f in fields if f.stored == SECRET]
    for f in fields:
        if f.stored == SECRET and f is not secret_fields[0]:
            continue  # one secret, judged once, under the first field that gives it
        value = values.get(f.stored)
        present = has_secret if f.stored == SECRET else bool(value)
        if f.required and not present:
            problems.append(f"{name(f)}: required")
        elif value and f.choices and value not in f.choices:
            problems.append(f"{name(f)}: must be {' or '.join(f.choices)}")
        elif value and f.check is not None:
            problem = f.check(value, values)
            if problem:
                problems.append(f"{name(f)}: {problem}")
    return problems


def config_name(f: Field) -> str:
    return f.config or f.api


BASIC_FIELDS = (
    Field(
        api="username",
        config="username",
        stored=USERNAME,
        help="registry user name",
        label="Username",
        flags=("--username",),
        max_length=256,
    ),
    Field(
        api="password",
        config="password",
        stored=SECRET,
        help="registry password or token",
        label="Password",
        flags=("--password", "--token"),
        secret=True,
        max_length=64 * 1024,
    ),
)


class Provider:
    name = "other"
    title = "Other Registry"  # the portal's tab (providers with one title share it)
    kind_label = ""  # in a shared tab, this provider's choice
    # The host to reach when the record has no url (None: the endpoint itself).
    default_host: str | None = None
    # The endpoint when a request names none (None: it must be given).
    default_endpoint: str | None = None
    endpoint_placeholder: str | None = "registry.example.com"  # None: not asked (a fixed home)
    fields: tuple[Field, ...] = BASIC_FIELDS
    # The portal forms that ask for url and insecure (where a kind has no fixed home).
    url_forms: tuple[str, ...] = ("add", "rotate")

    def field(self, stored: str) -> Field | None:
        return next((f for f in self.fields if f.stored == stored and f.config), None)

    def endpoint_problem(self, endpoint: str, options: Mapping[str, Any]) -> str | None:
        """Why this endpoint is not one of this kind's, or None."""
        return None

    def default_url(self, endpoint: str) -> str:
        return f"https://{self.default_host or endpoint}"

    def upstream_repo(self, rest: str) -> str:
        """The repository name at the registry for the part after <upstream>."""
        return rest

    def validate(
        self,
        endpoint: str,
        username: str | None,
        secret: str | None,
        options: Mapping[str, Any],
        secret_stored: bool = False,
    ) -> list[str]:
        """Problems with a registry record, named by config key; never quoting a secret.
        `secret_stored`: no new secret, the record keeps the one it has."""
        problems = []
        where = self.endpoint_problem(endpoint.lower(), options)
        if where:
            problems.append(f"endpoint: {where}")
        values = {**options, USERNAME: username, SECRET: secret}
        fields = tuple(f for f in self.fields if f.config)
        problems += problems_of(fields, values, bool(secret) or secret_stored, config_name)
        user = self.field(USERNAME)
        if user is not None and not user.required and (secret or secret_stored) and not username:
            problems.append("username: required with a password or token")
        return problems

    async def credentials(self, ctx: CredentialContext, registry: Registry, refresh: bool) -> RegistryCredentials:
        """Stored username and secret. `refresh` asks for new ones after a 401;
        stored credentials cannot be refreshed, so it changes nothing here."""
        secret = ctx.keyring.open(registry.secret_sealed, registry.id) if registry.secret_sealed else None
        return RegistryCredentials(username=registry.username, password=secret)
