"""Which names a team may claim: a DNS name (proxy.dnsname) not reserved by the operator.

Reserved, for every team: the names in `proxy.hosts` (port stripped) and
`domains.reserved`, each with every name under it. A reserved name is never
added, never verified, never served for a team and never answered by the HTTP
challenge, even when it was stored before the operator reserved it.
"""

from __future__ import annotations

from collections.abc import Iterable


def _bare(name: str) -> str:
    """ "Host:port", "[v6]:port", "*.name." -> the lower-case name alone."""
    name = name.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".").removeprefix("*.")
    if not name.isascii():
        # Clients and the hostname rule use the ASCII (punycode) form; an operator may write Unicode.
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name


class Reserved:
    """The operator's names; `covers` is true for them and every name under them."""

    def __init__(self, proxy_hosts: Iterable[str] = (), reserved: Iterable[str] = ()) -> None:
        self.names = frozenset(n for n in (_bare(h) for h in [*proxy_hosts, *reserved]) if n)

    def covers(self, hostname: str) -> bool:
        name = _bare(hostname)
        labels = name.split(".")
        return any(".".join(labels[i:]) in self.names for i in range(len(labels)))

    def reason(self, hostname: str) -> str:
        return (
            f"hostname: {_bare(hostname)} is reserved by the operator of this proxy "
            "(proxy.hosts or domains.reserved, and every name under them); no team can claim it"
        )
