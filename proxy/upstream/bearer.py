"""Bearer: the Docker token flow (distribution's token spec).

The registry's challenge names a `realm`, a `service` and maybe a `scope`. The
flow GETs the realm with `service` and the scope of the request, sending the
stored credentials as Basic (or nothing, for anonymous pulls), and reads
`token` (or OAuth2's `access_token`), `expires_in` (60 s when absent) and
`issued_at`. The realm must pass `realm_allowed` before anything is sent: a
registry could otherwise point the vendor's credentials at any host.
"""

from __future__ import annotations

import datetime as dt
import json

from yarl import URL

from proxy.upstream.challenge import Challenge
from proxy.upstream.errors import CredentialsRejected, RealmRefused, UpstreamError
from proxy.upstream.flow import MAX_ANSWER, SYSTEM_CLOCK, Clock, Flow, Request
from proxy.upstream.providers.base import RegistryCredentials
from proxy.upstream.realm import realm_allowed
from proxy.upstream.tokens import CachedToken, usable_until

DEFAULT_TOKEN_SECONDS = 60
MAX_CLOCK_SKEW = 300.0  # an issued_at further off than this is a clock problem, not an old token


class BearerAuth:
    def __init__(
        self,
        slug: str,
        registry_url: URL,
        insecure: bool,
        challenge: Challenge,
        scope: str,
        creds: RegistryCredentials,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.slug = slug
        self.registry_url = registry_url
        self.insecure = insecure
        self.challenge = challenge
        self.scope = scope
        self.creds = creds
        self.clock = clock

    @property
    def realm(self) -> URL:
        try:
            return URL(self.challenge.params.get("realm", ""))
        except ValueError:
            return URL()

    def check_realm(self) -> None:
        """Refuse a realm the registry's credentials may not go to."""
        realm = self.realm
        if not realm_allowed(self.registry_url, realm, self.insecure):
            raise RealmRefused(self.slug, realm.host or "?")

    def token_request(self) -> Request:
        params: dict[str, str] = {}
        if self.challenge.params.get("service"):
            params["service"] = self.challenge.params["service"]
        params["scope"] = self.scope
        headers = {"Authorization": self.creds.basic_header()} if self.creds.present else {}
        return Request("GET", str(self.realm.update_query(params)), headers, purpose="token service")

    def flow(self) -> Flow[CachedToken]:
        self.check_realm()
        started = self.clock.monotonic()
        response = yield self.token_request()
        if response.status in (401, 403):
            raise CredentialsRejected(self.slug, response.status)
        if response.status != 200:
            raise UpstreamError(self.slug, f"token service answered {response.status}")
        token, lifetime = parse_token_response(response.body, self.slug, self.clock.wall())
        return CachedToken(header=f"Bearer {token}", expires_at=usable_until(started, lifetime))


def parse_token_response(body: bytes, slug: str, now: float) -> tuple[str, float]:
    """(token, lifetime seconds) from a token service's JSON answer; `now` is wall time.

    `issued_at` (RFC 3339) shortens the lifetime by the time the token spent
    getting here, when the two clocks roughly agree; a skewed clock is ignored."""
    if len(body) > MAX_ANSWER:
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
            age = now - dt.datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
        except ValueError:
            age = 0.0
        if 0 < age <= MAX_CLOCK_SKEW:
            lifetime = max(lifetime - age, 1.0)
    return token, lifetime
