"""`/v2/anonymous/<upstream>/<repo>`: images a vendor chose to give away.

Only registries marked `allowAnonymous` are reachable; the proxy still pulls
from them with the vendor's stored credentials. Clients need no license, so
each client address gets a token bucket (proxy.auth.anonymous.throttle: 429
TOOMANYREQUESTS with Retry-After when it runs dry), and an anonymous token
grants only anonymous repositories (the name predicate is proxy.oci.names).

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

from collections.abc import Sequence

from proxy.oci.allowlist import allowed
from proxy.oci.errors import OCICode, OCIError
from proxy.store.models import App, Registry
from proxy.upstream.endpoints import canonical_endpoint
from proxy.upstream.providers import provider_of


def resolve_anonymous(registries: Sequence[Registry], name: str) -> tuple[Registry, str]:
    """(registry, repository there) for `anonymous/<upstream>/<rest>`; no I/O."""
    parts = name.split("/")
    if len(parts) < 3:
        raise OCIError(OCICode.NAME_UNKNOWN, "anonymous repositories are anonymous/<registry>/<repository>")
    upstream, rest = parts[1], "/".join(parts[2:])
    wanted = canonical_endpoint(upstream)
    matches = [
        r for r in registries if r.allow_anonymous and (r.slug == upstream or canonical_endpoint(r.endpoint) == wanted)
    ]
    # Two teams may share a slug: ambiguous names are refused rather than guessed.
    if len(matches) != 1:
        raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry", detail={"name": name})
    registry = matches[0]
    return registry, provider_of(registry).upstream_repo(rest)


def anonymous_allows(registry: Registry, team_apps: Sequence[App], repository: str) -> bool:
    """May `repository` (the name at the upstream) be pulled anonymously from `registry`?"""
    if not allowed(registry.anonymous_repositories, repository):
        return False
    served = [a for a in team_apps if a.team_id == registry.team_id and registry.serves(a.id)]
    return any(allowed(a.image_allowlist, repository) for a in served)
