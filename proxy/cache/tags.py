"""When a cached tag is served as it is, revalidated upstream, or served stale.

A tag maps to (digest, media type) per kind of `Accept`: a client asking for an index and
one asking for a single-platform manifest may get different digests for the same tag.
"""

from __future__ import annotations

import enum

from proxy.cache.index import TagEntry
from proxy.oci.grammar import MANIFEST_TYPES

STALE_WARNING = '110 - "Response is Stale"'


def accept_kind(accept: str) -> str:
    """The manifest media types an Accept header names, as one canonical key
    (order, spacing and q-values aside); `*` when it names none or all of them (the
    proxy then asks the upstream for every type: the same answer)."""
    named = set()
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in MANIFEST_TYPES:
            named.add(media)
    if not named or named == set(MANIFEST_TYPES):
        return "*"
    return ",".join(sorted(named))


def fresh(tag: TagEntry, now: float, ttl: float) -> bool:
    return now - tag.checked_at < ttl


class After(enum.Enum):
    """What a revalidating HEAD's answer means for the cached tag."""

    SERVE = "serve"  # same digest: serve the cached manifest, the tag is fresh again
    REFETCH = "refetch"  # the tag moved (or the upstream did not say where): GET it upstream
    NOT_FOUND = "not_found"  # the tag is gone upstream: 404, forget it
    STALE = "stale"  # the upstream failed: serve the last known digest, with a Warning
    FAIL = "fail"  # the upstream's refusal stands (auth trouble, or stale serving is off)


def after_head(status: int | None, announced: str | None, cached: str, serve_stale: bool) -> After:
    """`status` None: the upstream could not be reached (refused, timed out)."""
    if status is None or status == 429 or status >= 500:
        return After.STALE if serve_stale else After.FAIL
    if status == 404:
        return After.NOT_FOUND
    if status == 200:
        if announced is not None and announced.strip() == cached:
            return After.SERVE
        return After.REFETCH
    return After.FAIL
