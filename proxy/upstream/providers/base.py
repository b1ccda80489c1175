"""What every provider module supplies: where the registry lives, how repository
names map, what credentials it needs, and how to turn them into the username and
password its auth challenge wants. The challenge/token/streaming machinery stays
shared (proxy.upstream.auth, proxy.upstream.client)."""

from __future__ import annotations

import base64
import math
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


class Provider:
    name = "other"
    # The host to reach when the record has no url (None: the endpoint itself).
    default_host: str | None = None

    def default_url(self, endpoint: str) -> str:
        return f"https://{self.default_host or endpoint}"

    def upstream_repo(self, rest: str) -> str:
        """The repository name at the registry for the part after <upstream>."""
        return rest

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        """Problems with a registry record, phrased by field; never quoting a secret."""
        problems = []
        if secret and not username:
            problems.append("username: required with a password or token")
        return problems

    async def credentials(self, ctx: CredentialContext, registry: Registry, refresh: bool) -> RegistryCredentials:
        """Stored username and secret. `refresh` asks for new ones after a 401;
        stored credentials cannot be refreshed, so it changes nothing here."""
        secret = ctx.keyring.open(registry.secret_sealed, registry.id) if registry.secret_sealed else None
        return RegistryCredentials(username=registry.username, password=secret)
