"""Where the vendor's credentials may go: the registry's host and its realm.

A token realm is trusted when its host is the registry's host or shares its
registrable domain (auth.docker.io for registry-1.docker.io, quay.io/v2/auth
for quay.io). Anything else could be a registry trying to harvest credentials.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from publicsuffixlist import PublicSuffixList
from yarl import URL


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def registrable_domain(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host  # an address is its own domain
    except ValueError:
        pass
    return _psl().privatesuffix(host) or host


def same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def realm_allowed(registry: URL, realm: URL, insecure: bool) -> bool:
    if realm.scheme not in ("https", "http") or not realm.host:
        return False
    if realm.scheme == "http" and not insecure:
        return False
    if realm.user or realm.password:
        return False
    if not registry.host:
        return False
    rh, gh = realm.host.lower(), registry.host.lower()
    return rh == gh or registrable_domain(rh) == registrable_domain(gh)
