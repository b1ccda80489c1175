"""Predicates on repository names that several layers ask (the token endpoint, the pull routes)."""

from __future__ import annotations

ANONYMOUS_PREFIX = "anonymous/"


def is_anonymous(name: str) -> bool:
    """`anonymous/<upstream>/<repo>`: a name served without a license (proxy.pull.anonymous)."""
    return name.startswith(ANONYMOUS_PREFIX)
