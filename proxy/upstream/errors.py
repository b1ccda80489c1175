"""What can go wrong upstream, in words safe to show a client (no secrets)."""

from __future__ import annotations

from proxy.egress import Refusal
from proxy.oci.errors import PullgateCode


class UpstreamError(Exception):
    """Base: `slug` names the registry; messages never carry credentials."""

    code = PullgateCode.UPSTREAM_ERROR
    # Seconds a client should wait before trying again, when waiting helps.
    retry_after: int | None = None

    def __init__(self, slug: str, message: str) -> None:
        super().__init__(message)
        self.slug = slug
        self.message = message

    @property
    def status(self) -> int:
        """The status the client is answered: the code's own."""
        return self.code.status


class CredentialsRejected(UpstreamError):
    def __init__(self, slug: str, upstream_status: int) -> None:
        super().__init__(
            slug,
            f"the vendor's registry {slug!r} refused the proxy's credentials (upstream status {upstream_status})",
        )
        self.upstream_status = upstream_status


class RealmRefused(UpstreamError):
    def __init__(self, slug: str, realm_host: str) -> None:
        super().__init__(
            slug, f"registry {slug!r} sent a token realm on {realm_host!r}, which is not trusted with its credentials"
        )


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset, DNS failure: UPSTREAM_ERROR (502), as clients have always had it."""


class UpstreamTimeout(UpstreamError):
    code = PullgateCode.UPSTREAM_TIMEOUT


class EgressRefused(UpstreamError):
    """The registry (its url, a redirect, a token realm) pointed at a destination the
    egress policy refuses. The client's message names the registry, never the address."""

    def __init__(self, slug: str, refusal: Refusal) -> None:
        super().__init__(slug, f"registry {slug!r} pointed the proxy at a destination it may not connect to")
        self.refusal = refusal


class UpstreamBusy(UpstreamError):
    """Every upstream connection this registry may hold is in use (upstream.pool_per_registry)."""

    code = PullgateCode.UPSTREAM_UNAVAILABLE
    retry_after = 1

    def __init__(self, slug: str) -> None:
        super().__init__(slug, f"registry {slug!r} has no free upstream connection right now; try again shortly")
