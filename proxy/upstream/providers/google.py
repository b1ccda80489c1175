"""Google Container Registry (gcr.io, *.gcr.io) and Artifact Registry
(*-docker.pkg.dev). Credentials: `_json_key` with the service-account JSON key,
or `oauth2accesstoken` with an access token; both go to the token realm as
Basic credentials. Artifact Registry answers blob GETs with a relative
Location, resolved by the shared redirect code."""

from __future__ import annotations

import json
import re
from typing import Any

from proxy.upstream.providers.base import Provider

GCR_RE = re.compile(r"^(?:[a-z0-9-]+\.)?gcr\.io$")
GAR_RE = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$")
USERNAMES = ("_json_key", "oauth2accesstoken")


def json_key_problem(secret: str) -> str | None:
    """Why a service-account key is unusable, without quoting any of it."""
    try:
        data = json.loads(secret)
    except ValueError:
        return "password: the service-account key is not JSON"
    if not isinstance(data, dict) or not isinstance(data.get("client_email"), str):
        return "password: the service-account key has no client_email"
    return None


class Google(Provider):
    def __init__(self, name: str, endpoint_re: re.Pattern[str], hint: str) -> None:
        self.name = name
        self.endpoint_re = endpoint_re
        self.hint = hint

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        problems = []
        if not self.endpoint_re.match(endpoint.lower()):
            problems.append(f"endpoint: {self.hint}")
        if username not in USERNAMES:
            problems.append("username: must be _json_key (service-account key) or oauth2accesstoken")
        if not secret:
            problems.append("password: the service-account key or access token is required")
        elif username == "_json_key":
            problem = json_key_problem(secret)
            if problem:
                problems.append(problem)
        return problems


GCR = Google("gcr", GCR_RE, "Container Registry is gcr.io or <region>.gcr.io")
GAR = Google("gar", GAR_RE, "Artifact Registry is <location>-docker.pkg.dev")
