"""An app's image allowlist: which upstream repositories its customers may pull.

Patterns are fnmatch-style on the repository name at the upstream registry
(`vendor/*`, `vendor/api`, `library/redis`); `*` also crosses `/`. An empty
list allows every repository of the app's registries. A refused name answers
404 NAME_UNKNOWN, exactly like a repository that does not exist, so a customer
learns nothing about what else the vendor's registry holds. The same patterns
bound what a registry serves anonymously (proxy.pull.anonymous.anonymous_allows), and
a registry's `anonymous_repositories` use this grammar too.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

MAX_PATTERNS = 200


def allowed(patterns: Sequence[str], repository: str) -> bool:
    return not patterns or any(fnmatchcase(repository, p) for p in patterns)


def check_patterns(patterns: object, key: str = "imageAllowlist") -> list[str]:
    """Problems with a proposed list of patterns named `key` (empty when it is fine)."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return [f"{key}: must be a list of repository patterns (strings)"]
    problems = []
    if len(patterns) > MAX_PATTERNS:
        problems.append(f"{key}: at most {MAX_PATTERNS} patterns")
    for i, p in enumerate(patterns):
        if not p or len(p) > 255 or p != p.strip() or p.startswith("/"):
            problems.append(f"{key}[{i}]: must be a repository pattern like vendor/* (no leading /)")
    return problems
