"""Registry auth: the handshake, told once.

As distribution and containerd do it:
  1. send the request with the cached header for (registry, scope), if any;
  2. on 401, read WWW-Authenticate and answer it (`Authenticator.answer`):
     Basic -> the provider's username/password (`BasicAuth`);
     Bearer -> a token from the realm (`BearerAuth`), after the realm trust check;
     either fetched once for all waiters and cached per (registry, scope);
  3. retry once with the new header; a second 401 means the credentials are bad.

`handshake` is that dance as a flow (proxy.upstream.flow): it yields the
registry request, and an `Answer` step when it needs a header, and decides on
the responses it is sent. `UpstreamClient` drives it, and the token flows.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import cast

from yarl import URL

from proxy import metrics
from proxy.upstream.basic import BasicAuth
from proxy.upstream.bearer import BearerAuth
from proxy.upstream.challenge import parse_www_authenticate, pick
from proxy.upstream.errors import CredentialsRejected
from proxy.upstream.flow import SYSTEM_CLOCK, Clock, FlowRunner, Request, Response
from proxy.upstream.providers.base import RegistryCredentials
from proxy.upstream.tokens import CachedToken, TokenCache

BASIC_SCOPE = "*basic*"  # Basic needs no scope: one cache slot per registry


@dataclass(frozen=True)
class AuthTarget:
    """What the authenticator needs to know about one registry."""

    registry_id: str
    slug: str
    base_url: URL
    insecure: bool


@dataclass(frozen=True)
class Answer:
    """A handshake step: an Authorization header answering `challenges`, please.
    `stale` is the header the registry just refused (None: none was sent)."""

    challenges: tuple[str, ...]
    stale: str | None

    def __repr__(self) -> str:
        return "Answer()"


Step = Request | Answer


def handshake(request: Request, cached: str | None, slug: str) -> Generator[Step, Response | str, None]:
    """The registry request with its auth; the last response sent in is the caller's."""
    response = cast(Response, (yield request.authorized(cached)))
    if response.status != 401:
        return
    header = cast(str, (yield Answer(tuple(response.headers.getall("WWW-Authenticate", ())), cached)))
    response = cast(Response, (yield request.authorized(header)))
    if response.status == 401:
        raise CredentialsRejected(slug, 401)  # a fresh credential was refused: the vendor's are wrong


class Authenticator:
    def __init__(self, cache: TokenCache, run: FlowRunner, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cache = cache
        self.run = run
        self.clock = clock

    def cached(self, target: AuthTarget, scope: str) -> str | None:
        for key in ((target.registry_id, scope), (target.registry_id, BASIC_SCOPE)):
            tok = self.cache.peek(key)
            if tok is not None:
                return tok.header
        return None

    async def answer(
        self,
        target: AuthTarget,
        challenge_headers: list[str] | tuple[str, ...],
        scope: str,
        creds: RegistryCredentials,
        stale: str | None,
        upstream_status: int,
    ) -> str:
        """An Authorization header that answers the challenge, fetched once for all waiters."""
        challenge = pick(parse_www_authenticate(list(challenge_headers)))
        if challenge is None:
            raise CredentialsRejected(target.slug, upstream_status)
        if challenge.scheme == "basic":
            tok = await self.run(BasicAuth(target.slug, creds, stale, upstream_status).flow(), target.slug)

            async def known() -> CachedToken:
                return tok

            return (await self.cache.get((target.registry_id, BASIC_SCOPE), known, stale)).header
        bearer = BearerAuth(target.slug, target.base_url, target.insecure, challenge, scope, creds, self.clock)
        bearer.check_realm()  # before a cached token is handed out, too

        async def fetch() -> CachedToken:
            metrics.UPSTREAM_TOKEN_FETCHES.labels(target.slug, "bearer").inc()
            return await self.run(bearer.flow(), target.slug)

        return (await self.cache.get((target.registry_id, scope), fetch, stale)).header
