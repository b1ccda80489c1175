"""Google Container Registry (gcr.io, *.gcr.io) and Artifact Registry
(*-docker.pkg.dev). Credentials: `_json_key` with the service-account JSON key,
or `oauth2accesstoken` with an access token; both go to the token realm as
Basic credentials. Artifact Registry answers blob GETs with a relative
Location, resolved by the shared redirect code."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from proxy.upstream.providers.base import SECRET, USERNAME, Field, Provider

GCR_RE = re.compile(r"^(?:[a-z0-9-]+\.)?gcr\.io$")
GAR_RE = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$")
USERNAMES = ("_json_key", "oauth2accesstoken")


def json_key_problem(secret: str) -> str | None:
    """Why a service-account key is unusable, without quoting any of it."""
    try:
        data = json.loads(secret)
    except ValueError:
        return "the service-account key must be JSON with a client_email"
    if not isinstance(data, dict) or not isinstance(data.get("client_email"), str):
        return "the service-account key has no client_email"
    return None


def _secret_problem(secret: str, values: Mapping[str, Any]) -> str | None:
    return json_key_problem(secret) if values.get(USERNAME) == "_json_key" else None


FIELDS = (
    Field(
        api="username",
        config="username",
        stored=USERNAME,
        help="_json_key (service-account key) or oauth2accesstoken",
        flags=("--username",),
        required=True,
        choices=USERNAMES,
        max_length=256,
        forms=(),
    ),
    Field(
        api="password",
        config="password",
        stored=SECRET,
        help="the service-account JSON key (_json_key) or an access token",
        label="Password",
        flags=("--password",),
        secret=True,
        required=True,
        max_length=64 * 1024,
        check=_secret_problem,
        forms=(),
    ),
    # The CLI's --token: an access token, whose username is oauth2accesstoken unless given.
    Field(
        api="password",
        config=None,
        stored=SECRET,
        help="an OAuth2 access token (username oauth2accesstoken)",
        flags=("--token",),
        secret=True,
        implies=((USERNAME, "oauth2accesstoken"),),
        in_api=False,
        forms=(),
    ),
    # The usual way: the key alone, the username follows.
    Field(
        api="serviceAccountKey",
        config=None,
        stored=SECRET,
        help="the service-account JSON key",
        label="Service account key (JSON)",
        flags=("--serviceaccountkey",),
        secret=True,
        max_length=64 * 1024,
        implies=((USERNAME, "_json_key"),),
        check=_secret_problem,
        multiline=True,
        form_required=True,
    ),
)


class Google(Provider):
    title = "GCR / Artifact Registry"
    fields = FIELDS
    endpoint_placeholder = "gcr.io or us-docker.pkg.dev"
    url_forms = ("rotate",)

    def __init__(
        self, name: str, label: str, endpoint_re: re.Pattern[str], hint: str, default_endpoint: str | None
    ) -> None:
        self.name = name
        self.kind_label = label
        self.endpoint_re = endpoint_re
        self.hint = hint
        self.default_endpoint = default_endpoint

    def endpoint_problem(self, endpoint: str, options: Mapping[str, Any]) -> str | None:
        return None if self.endpoint_re.match(endpoint) else self.hint


GCR = Google("gcr", "Container Registry (gcr.io)", GCR_RE, "Container Registry is gcr.io or <region>.gcr.io", "gcr.io")
GAR = Google(
    "gar", "Artifact Registry (*-docker.pkg.dev)", GAR_RE, "Artifact Registry is <location>-docker.pkg.dev", None
)
