"""Registry auth: turning a registry's 401 challenge into an Authorization header.

The handshake, as distribution and containerd do it:
  1. send the request with the cached header for (registry, scope), if any;
  2. on 401, read WWW-Authenticate: Basic -> the stored username/password;
     Bearer -> GET the realm with `service` and `scope`, Basic credentials,
     read `token`/`access_token` and `expires_in` (default 60 s);
  3. retry once with the new header; a second 401 means the credentials are bad.
The realm must pass `realm_allowed` before any credential is sent to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from proxy import metrics
from proxy.upstream.challenge import Challenge, parse_www_authenticate, pick
from proxy.upstream.connector import EgressDenied, record_refusal
from proxy.upstream.errors import CredentialsRejected, EgressRefused, RealmRefused, UpstreamError, UpstreamTimeout
from proxy.upstream.providers.base import RegistryCredentials
from proxy.upstream.realm import realm_allowed
from proxy.upstream.tokens import CachedToken, TokenCache, usable_until

DEFAULT_TOKEN_SECONDS = 60
MAX_CLOCK_SKEW = 300.0  # an issued_at further off than this is a clock problem, not an old token
MAX_TOKEN_RESPONSE = 1024 * 1024
BASIC_SCOPE = "*basic*"  # Basic needs no scope: one cache slot per registry


@dataclass(frozen=True)
class AuthTarget:
    """What the authenticator needs to know about one registry."""

    registry_id: str
    slug: str
    base_url: URL
    insecure: bool


class Authenticator:
    def __init__(self, session: aiohttp.ClientSession, cache: TokenCache, timeout: float) -> None:
        self.session = session
        self.cache = cache
        self.timeout = timeout

    def cached(self, target: AuthTarget, scope: str) -> str | None:
        for key in ((target.registry_id, scope), (target.registry_id, BASIC_SCOPE)):
            tok = self.cache.peek(key)
            if tok is not None:
                return tok.header
        return None

    async def answer(
        self,
        target: AuthTarget,
        challenge_headers: list[str],
        scope: str,
        creds: RegistryCredentials,
        stale: str | None,
        upstream_status: int,
    ) -> str:
        """An Authorization header that answers the challenge, fetched once for all waiters."""
        challenge = pick(parse_www_authenticate(challenge_headers))
        if challenge is None:
            raise CredentialsRejected(target.slug, upstream_status)
        if challenge.scheme == "basic":
            if not creds.present:
                raise CredentialsRejected(target.slug, upstream_status)
            header = creds.basic_header()
            if header == stale:
                raise CredentialsRejected(target.slug, upstream_status)
            tok = CachedToken(header=header, expires_at=creds.expires_at)
            return (await self.cache.get((target.registry_id, BASIC_SCOPE), _const(tok), stale)).header
        realm = URL(challenge.params.get("realm", ""))
        if not realm_allowed(target.base_url, realm, target.insecure):
            raise RealmRefused(target.slug, realm.host or "?")

        async def fetch() -> CachedToken:
            return await self._fetch_token(target, challenge, realm, scope, creds)

        return (await self.cache.get((target.registry_id, scope), fetch, stale)).header

    async def _fetch_token(
        self, target: AuthTarget, challenge: Challenge, realm: URL, scope: str, creds: RegistryCredentials
    ) -> CachedToken:
        params: dict[str, str] = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        params["scope"] = scope
        headers = {"Authorization": creds.basic_header()} if creds.present else {}
        metrics.UPSTREAM_TOKEN_FETCHES.labels(target.slug, "bearer").inc()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.get(realm.update_query(params), headers=headers, allow_redirects=False) as resp:
                    if resp.status in (401, 403):
                        raise CredentialsRejected(target.slug, resp.status)
                    if resp.status != 200:
                        raise UpstreamError(target.slug, f"token service answered {resp.status}")
                    body = await resp.content.read(MAX_TOKEN_RESPONSE + 1)
        except TimeoutError:
            raise UpstreamTimeout(target.slug, "token service timed out") from None
        except EgressDenied as exc:
            record_refusal(target.slug, exc, "the token realm")
            raise EgressRefused(target.slug, exc.refusal) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(target.slug, f"token service unreachable ({type(exc).__name__})") from None
        token, lifetime = parse_token_response(body, target.slug)
        return CachedToken(header=f"Bearer {token}", expires_at=usable_until(started, lifetime))


def parse_token_response(body: bytes, slug: str, now: float | None = None) -> tuple[str, float]:
    """(token, lifetime seconds) from a token service's JSON answer.

    `issued_at` (RFC 3339) shortens the lifetime by the time the token spent
    getting here, when the two clocks roughly agree; a skewed clock is ignored."""
    if len(body) > MAX_TOKEN_RESPONSE:
        raise UpstreamError(slug, "token service answer is too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UpstreamError(slug, "token service answer is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(slug, "token service answer is not a JSON object")
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise UpstreamError(slug, "token service answer has no usable token")
    expires_in = data.get("expires_in", DEFAULT_TOKEN_SECONDS)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_SECONDS
    lifetime = float(expires_in)
    issued = data.get("issued_at")
    if isinstance(issued, str):
        try:
            age = (time.time() if now is None else now) - dt.datetime.fromisoformat(
                issued.replace("Z", "+00:00")
            ).timestamp()
        except ValueError:
            age = 0.0
        if 0 < age <= MAX_CLOCK_SKEW:
            lifetime = max(lifetime - age, 1.0)
    return token, lifetime


def _const(tok: CachedToken):  # type: ignore[no-untyped-def]
    async def fetch() -> CachedToken:
        return tok

    return fetch
