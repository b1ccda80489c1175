"""Which registry serves `proxy/<app>/<upstream>/<repo>`, decided with no I/O.

In order: a registry slug of the app's team; a configured endpoint host;
otherwise a Docker Hub namespace when the team has Docker Hub configured.
Anything else is NAME_UNKNOWN: the proxy never becomes an open proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.oci.errors import OCICode, OCIError
from proxy.oci.grammar import ProxyName
from proxy.store.models import Registry
from proxy.upstream.endpoints import canonical_endpoint
from proxy.upstream.providers import provider_of


def resolve(registries: Sequence[Registry], name: ProxyName) -> tuple[Registry, str]:
    """(registry, repository name at that registry)."""
    by_slug = next((r for r in registries if r.slug == name.upstream), None)
    if by_slug is not None:
        return by_slug, _repo(by_slug, name.rest)
    wanted = canonical_endpoint(name.upstream)
    by_endpoint = next((r for r in registries if canonical_endpoint(r.endpoint) == wanted), None)
    if by_endpoint is not None:
        return by_endpoint, _repo(by_endpoint, name.rest)
    hub = next((r for r in registries if r.provider == "dockerhub"), None)
    if hub is not None and "." not in name.upstream:
        rest = f"{name.upstream}/{name.rest}" if name.rest else name.upstream
        return hub, _repo(hub, rest)
    raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry", detail={"name": name.full})


def _repo(registry: Registry, rest: str) -> str:
    if not rest:
        raise OCIError(OCICode.NAME_UNKNOWN, "no repository after the registry name")
    return provider_of(registry).upstream_repo(rest)
