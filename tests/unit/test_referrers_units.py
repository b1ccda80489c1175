"""An upstream 404 on the referrers API, as a client must read it (issue 12).

oras (oras-go `referrersPageByAPI`) falls back to the referrers tag schema on a 404
whose OCI code is not NAME_UNKNOWN, and reports "repository not found" on NAME_UNKNOWN;
the OCI distribution spec ("Unavailable Referrers API") has every client fall back on a
404. So an upstream without the API must not come back as NAME_UNKNOWN.
"""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict

from proxy.pull.relay import passed_headers, upstream_error


class Upstream404:
    """What upstream_error reads of an aiohttp ClientResponse: status, headers, content.read()."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.status = 404
        self.headers = CIMultiDict({"Content-Type": content_type})
        self.content = self
        self._body = body

    async def read(self, n: int = -1) -> bytes:
        return self._body[:n] if n >= 0 else self._body


def _oci(code: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": "upstream says", "detail": None}]}).encode()


# The answers of registries without the referrers API, and of one that has it for a repository it lacks.
NO_API = [
    (b"404 page not found\n", "text/plain; charset=utf-8"),  # distribution 2.8: no such route
    (b"", "text/plain"),
    (_oci("MANIFEST_UNKNOWN"), "application/json"),
    (_oci("UNSUPPORTED"), "application/json"),
    (b"<html>Not Found</html>", "text/html"),
]


@pytest.mark.parametrize(("body", "content_type"), NO_API)
async def test_upstream_without_the_api_is_a_404_that_is_not_name_unknown(body: bytes, content_type: str):
    err = await upstream_error(Upstream404(body, content_type), "referrers", "vendor-up")  # type: ignore[arg-type]
    assert err.status == 404
    assert err.code.value != "NAME_UNKNOWN"  # oras would stop: "repository not found"
    assert err.code.value == "UNSUPPORTED"
    doc = json.loads(err.body())
    assert doc["errors"][0]["code"] == "UNSUPPORTED" and "referrers" in doc["errors"][0]["message"]
    assert err.response().content_type == "application/json"


async def test_an_unknown_repository_stays_name_unknown():
    err = await upstream_error(Upstream404(_oci("NAME_UNKNOWN"), "application/json"), "referrers", "up")  # type: ignore[arg-type]
    assert (err.status, err.code.value) == (404, "NAME_UNKNOWN")
    assert err.message == "upstream says"


@pytest.mark.parametrize("kind", ["manifests", "blobs", "tags"])
async def test_other_routes_keep_their_404_codes(kind: str):
    err = await upstream_error(Upstream404(b"404 page not found\n", "text/plain"), kind, "up")  # type: ignore[arg-type]
    assert err.status == 404 and err.code.value != "UNSUPPORTED"


def test_an_upstream_index_keeps_its_filter_header_and_content_type():
    """A registry with the API: `OCI-Filters-Applied` (the `artifactType` filter it applied)
    and the exact index media type (oras checks it) reach the client."""
    upstream = Upstream404(b"", "application/vnd.oci.image.index.v1+json")
    upstream.headers["OCI-Filters-Applied"] = "artifactType"
    upstream.headers["X-Internal"] = "not relayed"
    headers = passed_headers(upstream)  # type: ignore[arg-type]
    assert headers == {
        "Content-Type": "application/vnd.oci.image.index.v1+json",
        "OCI-Filters-Applied": "artifactType",
    }
