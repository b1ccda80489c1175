"""WWW-Authenticate parsing (RFC 9110 §11.6.1): several challenges in one
header, quoted values with escapes, commas inside quotes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})")
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))')
_TOKEN68_RE = re.compile(r"\s*([A-Za-z0-9\-._~+/]+=*)\s*(?:,|$)")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "basic", "bearer", ...
    params: dict[str, str] = field(default_factory=dict)


def parse_www_authenticate(values: str | list[str]) -> list[Challenge]:
    """All challenges in one or more header values; malformed parts are skipped."""
    if isinstance(values, str):
        values = [values]
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one(value))
    return out


def _parse_one(s: str) -> list[Challenge]:
    out: list[Challenge] = []
    pos = 0
    n = len(s)
    while pos < n:
        # skip separators between challenges
        while pos < n and s[pos] in ", \t":
            pos += 1
        m = _SCHEME_RE.match(s, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < n:
            pm = _PARAM_RE.match(s, pos)
            if pm is None:
                tm = _TOKEN68_RE.match(s, pos) if not params else None
                if tm is not None and "=" not in s[pos : tm.end()].rstrip(",= \t"):
                    pos = tm.end()  # token68 credentials-style value: not used by registries
                break
            key = pm.group(1).lower()
            if pm.group(2) is not None:
                val = re.sub(r"\\(.)", r"\1", pm.group(2))
            else:
                val = pm.group(3)
            params.setdefault(key, val)
            pos = pm.end()
            # a comma may end this param; the next thing is a param or a new scheme
            ws = pos
            while ws < n and s[ws] in " \t":
                ws += 1
            if ws < n and s[ws] == ",":
                pos = ws + 1
                nxt = _PARAM_RE.match(s, pos)
                if nxt is None:
                    break  # what follows is a new challenge
            else:
                pos = ws
                break
        out.append(Challenge(scheme=scheme, params=params))
    return out


def pick(challenges: list[Challenge]) -> Challenge | None:
    """Prefer Bearer (scoped, short-lived) over Basic."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None
