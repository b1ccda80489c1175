"""Basic: the stored username and password, as the registry's challenge asked.

No request of its own: the flow only turns the credentials into a header that
stays usable as long as they do (an ECR password expires; stored ones do not)."""

from __future__ import annotations

from proxy.upstream.errors import CredentialsRejected
from proxy.upstream.flow import Flow
from proxy.upstream.providers.base import RegistryCredentials
from proxy.upstream.tokens import CachedToken


class BasicAuth:
    def __init__(self, slug: str, creds: RegistryCredentials, stale: str | None, upstream_status: int) -> None:
        self.slug = slug
        self.creds = creds
        self.stale = stale
        self.upstream_status = upstream_status

    def flow(self) -> Flow[CachedToken]:
        yield from ()  # nothing to ask anyone
        if not self.creds.present:
            raise CredentialsRejected(self.slug, self.upstream_status)
        header = self.creds.basic_header()
        if header == self.stale:  # the very header the registry just refused
            raise CredentialsRejected(self.slug, self.upstream_status)
        return CachedToken(header=header, expires_at=self.creds.expires_at)
