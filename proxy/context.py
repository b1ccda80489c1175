"""The per-request pull context: who pulls which app through which registry.

Filled in by the pull routes and the token endpoint, read by the access log
and the pull log after the answer; a leaf, so every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web


class Customer(Protocol):
    """What the context keeps of a customer (proxy.store.models.Customer has it)."""

    @property
    def id(self) -> str: ...
    @property
    def team_id(self) -> str: ...
    @property
    def app_slug(self) -> str: ...
    @property
    def license_ref(self) -> str: ...


@dataclass
class PullContext:
    """What the access log and pull log want to know about one request."""

    route: str = "other"
    app: str | None = None
    registry: str | None = None
    customer_id: str | None = None
    bytes_sent: int = 0
    # Why a body stream was cut (proxy.pull.relay.StreamAborted.reason); client-side
    # reasons are logged and counted as 499, like nginx does.
    aborted: str | None = None
    # For the pull log: the customer's team, what was asked, of which image.
    team_id: str | None = None
    action: str | None = None  # auth | manifest | HEAD | blob | tags | referrers
    image: str | None = None
    reference: str | None = None
    license_ref: str | None = None  # a short hash of the license, never the license
    cache: str | None = None  # hit | miss, for manifests and blobs when the cache is on

    def note(self, customer: Customer) -> None:
        """Whose request this is, for the access and pull logs."""
        self.app, self.customer_id, self.team_id = customer.app_slug, customer.id, customer.team_id
        self.license_ref = customer.license_ref or None


CTX_KEY = web.RequestKey("pull_ctx", PullContext)
# The request id of the access log line and the X-Request-Id header.
REQUEST_ID = web.RequestKey("request_id", str)
# Set by the host table on a verified custom hostname: the only team served there.
HOST_TEAM = web.RequestKey("host_team", str)


def ctx(request: web.Request) -> PullContext:
    """This request's pull context, created on first use."""
    c = request.get(CTX_KEY)
    if c is None:
        c = PullContext()
        request[CTX_KEY] = c
    return c
