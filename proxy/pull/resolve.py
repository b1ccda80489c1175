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


def resolve(registries: Sequence[Registry], name: ProxyName, ns: str | None = None) -> tuple[Registry, str]:
    """(registry, repository name at that registry).

    `ns` is the `?ns=<image host>` a containerd mirror adds (OCI distribution spec, "Registry
    Proxying"): with one hosts.toml for every host (`certs.d/_default`, mirror URL ending in
    `/v2/proxy/<app>`), the name holds no registry, and `ns` says which. A name whose first
    component is a registry of the app still means that one, unless `ns` names another.
    """
    by_ns = _by_endpoint(registries, ns) if ns else None
    named = next((r for r in registries if r.slug == name.upstream), None) or _by_endpoint(registries, name.upstream)
    if named is not None and (by_ns is None or named is by_ns):
        return named, _repo(named, name.rest)
    if by_ns is not None:
        return by_ns, _repo(by_ns, f"{name.upstream}/{name.rest}" if name.rest else name.upstream)
    if ns:
        # An image of a host the app has no registry for: never guessed to be on Docker Hub.
        raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry", detail={"name": name.full})
    hub = next((r for r in registries if r.provider == "dockerhub"), None)
    if hub is not None and "." not in name.upstream:
        rest = f"{name.upstream}/{name.rest}" if name.rest else name.upstream
        return hub, _repo(hub, rest)
    raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry", detail={"name": name.full})


def _by_endpoint(registries: Sequence[Registry], host: str) -> Registry | None:
    wanted = canonical_endpoint(host)
    return next((r for r in registries if canonical_endpoint(r.endpoint) == wanted), None)


def _repo(registry: Registry, rest: str) -> str:
    if not rest:
        raise OCIError(OCICode.NAME_UNKNOWN, "no repository after the registry name")
    return provider_of(registry).upstream_repo(rest)
