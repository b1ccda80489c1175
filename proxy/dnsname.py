"""The shape of a DNS host name, as the config (`domains.reserved`) and custom hostnames accept it."""

from __future__ import annotations

import re

HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def hostname_problem(hostname: str) -> str | None:
    if not HOSTNAME_RE.match(hostname):
        return "hostname: must be a fully qualified DNS name in lower case (e.g. images.vendor.example)"
    return None
