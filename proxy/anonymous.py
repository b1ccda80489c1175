"""`/v2/anonymous/<upstream>/<repo>`: images a vendor chose to give away.

Only registries marked `allowAnonymous` are reachable; the proxy still pulls
from them with the vendor's stored credentials. Clients need no license, so
each client address gets a token bucket (429 TOOMANYREQUESTS with Retry-After
when it runs dry), and an anonymous token grants only anonymous repositories.

Which repositories (`anonymous_allows`): anonymous access never reaches more
than a license would. A repository is served only when
  1. the registry's `anonymousRepositories` patterns match it (an empty list
     matches every repository), and
  2. some app the registry serves (its linked apps, or every app of its team
     when it is linked to none) allows it by its image allowlist (an app with
     an empty allowlist allows everything; a registry that serves no app serves
     nothing anonymously).
Anything else is 404 NAME_UNKNOWN before any upstream I/O, exactly like a
repository that does not exist.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from proxy.auth.origin import address_key
from proxy.oci.allowlist import allowed
from proxy.oci.errors import OCIError
from proxy.store.models import App, Registry
from proxy.upstream.providers import provider_of
from proxy.upstream.resolve import canonical_endpoint

PREFIX = "anonymous/"
SUBJECT = "anonymous"  # the `sub` of anonymous tokens; no customer has this id


def is_anonymous(name: str) -> bool:
    return name.startswith(PREFIX)


def resolve_anonymous(registries: Sequence[Registry], name: str) -> tuple[Registry, str]:
    """(registry, repository there) for `anonymous/<upstream>/<rest>`; no I/O."""
    parts = name.split("/")
    if len(parts) < 3:
        raise OCIError("NAME_UNKNOWN", "anonymous repositories are anonymous/<registry>/<repository>")
    upstream, rest = parts[1], "/".join(parts[2:])
    wanted = canonical_endpoint(upstream)
    matches = [
        r for r in registries if r.allow_anonymous and (r.slug == upstream or canonical_endpoint(r.endpoint) == wanted)
    ]
    # Two teams may share a slug: ambiguous names are refused rather than guessed.
    if len(matches) != 1:
        raise OCIError("NAME_UNKNOWN", "repository name not known to registry", detail={"name": name})
    registry = matches[0]
    return registry, provider_of(registry).upstream_repo(rest)


def anonymous_allows(registry: Registry, team_apps: Sequence[App], repository: str) -> bool:
    """May `repository` (the name at the upstream) be pulled anonymously from `registry`?"""
    if not allowed(registry.anonymous_repositories, repository):
        return False
    served = [a for a in team_apps if a.team_id == registry.team_id and registry.serves(a.id)]
    return any(allowed(a.image_allowlist, repository) for a in served)


class RateLimiter:
    """A token bucket per key, with bounded memory: past `max_keys` the least
    recently seen key is forgotten. Keys are client addresses by default, counted
    by `address_key` (IPv6 by /64, so one client cannot rotate through its prefix);
    pass `key=str` for keys that are not addresses."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        key: Callable[[str], str] = address_key,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self.clock = clock
        self.key = key
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last time)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float | None:
        """None when allowed; else the seconds until the next request would be."""
        key = self.key(key)
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # the least recently seen address
        if allowed:
            return None
        return math.inf if self.rate <= 0 else (1 - tokens) / self.rate

    def wait(self, key: str) -> float | None:
        """Like take(), without spending: None when a request would be allowed now."""
        key = self.key(key)
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            return None
        return math.inf if self.rate <= 0 else (1 - tokens) / self.rate

    def check(self, key: str) -> None:
        wait = self.take(key)
        if wait is not None:
            from proxy import metrics

            metrics.ANONYMOUS_LIMITED.inc()
            retry = "3600" if math.isinf(wait) else str(max(1, math.ceil(wait)))
            raise OCIError(
                "TOOMANYREQUESTS", "too many anonymous requests from this address", headers={"Retry-After": retry}
            )
