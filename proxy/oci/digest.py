"""Content addressing: what was asked for by digest must hash to that digest.

A blob is hashed chunk by chunk while it streams (`Verifier`); a manifest is
small and read whole (at most `MAX_MANIFEST`, as distribution caps it), so it is
checked before its first byte goes out (`manifest_digest_problem`).
"""

from __future__ import annotations

import hashlib

from proxy.oci.grammar import KNOWN_DIGESTS

# distribution refuses manifests over 4 MiB; so does the proxy, from the upstream.
MAX_MANIFEST = 4 * 1024 * 1024


def is_digest(reference: str | None) -> bool:
    """A reference the grammar accepted is a digest when it has an algorithm."""
    return reference is not None and ":" in reference


class Verifier:
    """Hashes a body as it passes; `matches()` once it has all been seen."""

    def __init__(self, digest: str) -> None:
        algorithm, _, self.expected = digest.partition(":")
        if algorithm not in KNOWN_DIGESTS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def matches(self) -> bool:
        return self._hash.hexdigest() == self.expected


def digest_of(body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def manifest_digest_problem(body: bytes, requested: str | None, announced: str | None) -> str | None:
    """Why these manifest bytes may not be served, or None when they may.

    `requested` is the client's reference when it is a digest; `announced` is the
    upstream's Docker-Content-Digest header. Each one given must match the bytes.
    """
    for what, digest in (("requested digest", requested), ("Docker-Content-Digest", announced)):
        if digest is None:
            continue
        algorithm, _, hexpart = digest.strip().partition(":")
        if algorithm not in KNOWN_DIGESTS or len(hexpart) != KNOWN_DIGESTS[algorithm]:
            return f"the upstream's {what} is not a supported digest"
        if digest_of(body, algorithm) != f"{algorithm}:{hexpart.lower()}":
            return f"the manifest's bytes do not match the {what}"
    return None
