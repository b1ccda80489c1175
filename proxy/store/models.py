"""Rows as the rest of the proxy sees them. Secrets stay sealed here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Team:
    id: str
    name: str


@dataclass(frozen=True)
class App:
    id: str
    team_id: str
    slug: str
    name: str
    # Upstream repository patterns (fnmatch); empty means every repository.
    image_allowlist: tuple[str, ...] = ()
    # PEM public key that signs this app's KOTS licenses (for `license import`).
    kots_public_key: str | None = None


@dataclass(frozen=True)
class Registry:
    id: str
    team_id: str
    slug: str
    provider: str
    endpoint: str
    url: str
    insecure: bool
    username: str | None
    # Sealed secret (password, token, secret access key, service-account JSON).
    secret_sealed: str | None
    allow_anonymous: bool = False
    # Upstream repository patterns (fnmatch) served on /v2/anonymous/...; empty: every
    # repository the apps it serves allow (see proxy.pull.anonymous.anonymous_allows).
    anonymous_repositories: tuple[str, ...] = ()
    # Provider-specific, non-secret settings (ECR region, role ARN, API URL...).
    options: dict[str, str] = field(default_factory=dict)
    # App ids this registry serves; empty means every app of the team.
    app_ids: tuple[str, ...] = ()

    def serves(self, app_id: str) -> bool:
        return not self.app_ids or app_id in self.app_ids


@dataclass(frozen=True)
class Channel:
    """A release channel of an app; customers are on one or more of them."""

    id: str
    app_id: str
    name: str
    slug: str
    position: int = 0
    is_default: bool = False  # the channel a new customer goes on when none is named
    created_at: str | None = None


@dataclass(frozen=True)
class Customer:
    id: str
    team_id: str
    app_id: str
    app_slug: str
    name: str
    email: str | None
    license_type: str
    expires_at: dt.datetime | None
    status: str  # active | revoked | archived
    created_at: str | None = None
    # The first hex digits of the license's SHA-256: names it in logs without revealing it.
    license_ref: str = ""
    # The vendor's own identifier of this customer (the `replicated` CLI's --custom-id).
    custom_id: str | None = None
    # Monthly egress (bytes served) past which the team's webhook is told, once a month.
    egress_threshold_bytes: int | None = None

    def refusal(self, now: dt.datetime) -> str | None:
        """Why this license may not pull now, or None when it may."""
        if self.status != "active":
            return self.status
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return None


@dataclass(frozen=True)
class CustomHostname:
    hostname: str
    team_id: str
    token: str  # the ownership challenge shown to the vendor
    status: str  # pending | verified | failed
    reason: str | None = None
    is_default: bool = False
    cert_pem: str | None = None
    key_sealed: str | None = None  # the TLS key, sealed with "hostname:<name>" as associated data
    cert_not_after: str | None = None
    created_at: str | None = None
