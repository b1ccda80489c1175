"""Name, tag, digest and path grammar of the OCI distribution spec.

Everything a client sends is checked here before anything goes upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.oci.errors import OCICode, OCIError, PullgateCode

# distribution-spec: <name> components and the whole name. Anchored with \Z, not `$`:
# `$` also matches before a trailing newline, which would let "v1\n" through.
COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{COMPONENT}(?:/{COMPONENT})*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
PAGE_SIZE_RE = re.compile(r"[0-9]{1,6}")
KNOWN_DIGESTS = {"sha256": 64, "sha512": 128}
MAX_NAME = 255
# The manifest types relayed, in the Accept order a pull sends them upstream.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

_ROUTE_RE = re.compile(
    r"^/v2/(?P<name>.+?)/(?:(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)|(?P<tags>tags/list))$"
)


@dataclass(frozen=True)
class Route:
    name: str
    kind: str  # manifests | blobs | referrers | tags
    reference: str | None


def decode_path(raw_path: str) -> str:
    """Percent-decode once; anything that is not clean UTF-8 is refused."""
    raw = raw_path.split("?", 1)[0]
    try:
        path = unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise OCIError(OCICode.NAME_INVALID, "path is not valid UTF-8") from None
    if "%" in path or "\\" in path or "\x00" in path:
        raise OCIError(OCICode.NAME_INVALID, "path has encoded or control characters")
    return path


def parse_route(path: str) -> Route:
    m = _ROUTE_RE.match(path)
    if m is None:
        raise OCIError(OCICode.NAME_UNKNOWN, "no such route")
    name = m["name"]
    check_name(name)
    if m["tags"]:
        return Route(name=name, kind="tags", reference=None)
    kind, ref = m["kind"], m["ref"]
    if kind == "manifests":
        if ":" in ref:
            check_digest(ref)
        elif not TAG_RE.match(ref):
            # A tag that cannot exist is unknown (as distribution answers); not sent upstream.
            raise OCIError(OCICode.MANIFEST_UNKNOWN, "manifest unknown: invalid tag")
    else:
        check_digest(ref)
    return Route(name=name, kind=kind, reference=ref)


def check_name(name: str) -> None:
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise OCIError(OCICode.NAME_INVALID, "invalid repository name")


def check_page_size(n: str | None) -> None:
    """`n` of tags/list and _catalog: a small non-negative integer when given."""
    # Not str.isdigit(): it accepts "²", which int() then refuses.
    if n is not None and not PAGE_SIZE_RE.fullmatch(n):
        raise OCIError(PullgateCode.PAGINATION_NUMBER_INVALID, "n must be a non-negative integer")


def check_digest(digest: str) -> None:
    if not DIGEST_RE.match(digest):
        raise OCIError(OCICode.DIGEST_INVALID, "invalid digest")
    algo, _, hexpart = digest.partition(":")
    want = KNOWN_DIGESTS.get(algo)
    if want is None:
        raise OCIError(OCICode.DIGEST_INVALID, f"unsupported digest algorithm {algo!r}")
    if len(hexpart) != want or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise OCIError(OCICode.DIGEST_INVALID, "invalid digest")


@dataclass(frozen=True)
class ProxyName:
    """`proxy/<app>/<upstream>/<repo>`: whose image, from which registry."""

    app: str
    upstream: str
    # The rest of the name after <upstream>; empty for `proxy/<app>/redis`.
    rest: str

    @property
    def full(self) -> str:
        return "/".join(p for p in ("proxy", self.app, self.upstream, self.rest) if p)


def split_proxy_name(name: str) -> ProxyName:
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != "proxy":
        raise OCIError(OCICode.NAME_UNKNOWN, "repository names start with proxy/<app>/")
    return ProxyName(app=parts[1], upstream=parts[2], rest="/".join(parts[3:]))
