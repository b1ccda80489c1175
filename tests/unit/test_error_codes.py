"""The error codes, declared once in proxy/oci/errors.py: each with one status and message,
unique, the spec's group exactly the spec's list, and no other way to raise one."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from multidict import CIMultiDict

from proxy import upstream
from proxy.egress import Refusal
from proxy.listener import BUSY_RESPONSE
from proxy.oci.errors import OCICode, OCIError, PullgateCode, lookup
from proxy.pull.relay import upstream_error
from proxy.upstream.errors import (
    CredentialsRejected,
    EgressRefused,
    RealmRefused,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

PROXY = Path(upstream.__file__).resolve().parent.parent

# The OCI Distribution spec v1.1, "Error Codes" (code-1 to code-14).
SPEC = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
]
ALL = [*OCICode, *PullgateCode]


def test_the_spec_group_is_the_spec_list() -> None:
    assert sorted(c.value for c in OCICode) == sorted(SPEC)


def test_every_code_has_one_status_and_a_message() -> None:
    for code in ALL:
        assert isinstance(code.status, int) and 400 <= code.status < 600, code
        assert isinstance(code.message, str) and code.message.strip(), code
        assert code.value == code.name  # the constant is named as the wire string


def test_codes_are_unique_across_both_groups() -> None:
    values = [c.value for c in ALL]
    assert len(values) == len(set(values))
    assert {c.value for c in OCICode}.isdisjoint(c.value for c in PullgateCode)


def test_pullgate_codes_are_marked_as_not_in_the_spec() -> None:
    assert "NOT in the OCI Distribution spec" in (PullgateCode.__doc__ or "")


def test_statuses_are_the_ones_clients_have_always_had() -> None:
    """The wire format does not change: the table that preceded the declarations."""
    before = {
        "UNAUTHORIZED": 401,
        "DENIED": 403,
        "NAME_UNKNOWN": 404,
        "MANIFEST_UNKNOWN": 404,
        "BLOB_UNKNOWN": 404,
        "NAME_INVALID": 400,
        "TAG_INVALID": 400,
        "DIGEST_INVALID": 400,
        "MANIFEST_INVALID": 400,
        "PAGINATION_NUMBER_INVALID": 400,
        "RANGE_INVALID": 416,
        "SIZE_INVALID": 400,
        "UNSUPPORTED": 405,
        "TOOMANYREQUESTS": 429,
        "UPSTREAM_ERROR": 502,
        "UPSTREAM_UNAVAILABLE": 503,
        "UPSTREAM_TIMEOUT": 504,
        "UNAVAILABLE": 503,
    }
    assert {v: lookup(v).status for v in before} == before  # type: ignore[union-attr]
    assert PullgateCode.INTERNAL_ERROR.status == 500


def test_a_string_cannot_be_raised() -> None:
    with pytest.raises(TypeError):
        OCIError("NAME_UNKNOWN", "a string, not a declared code")  # type: ignore[arg-type]
    assert lookup("NO_SUCH_CODE") is None and lookup("name_unknown") is None
    assert lookup("NAME_UNKNOWN") is OCICode.NAME_UNKNOWN


def test_the_wire_format() -> None:
    err = OCIError(OCICode.NAME_UNKNOWN, detail={"name": "x"})
    assert err.status == 404 and err.message == "repository name not known to registry"
    wire = {"code": "NAME_UNKNOWN", "message": "repository name not known to registry", "detail": {"name": "x"}}
    assert json.loads(err.body()) == {"errors": [wire]}
    resp = err.response()
    assert resp.status == 404 and resp.content_type == "application/json"
    head = err.response(head=True)
    assert head.body is None and head.headers["Content-Length"] == str(len(err.body()))
    assert OCIError(PullgateCode.BAD_REQUEST, "x", status=431).status == 431  # an aiohttp refusal keeps its status


def test_the_busy_answer_is_built_from_the_code() -> None:
    body = json.loads(BUSY_RESPONSE.split(b"\r\n\r\n", 1)[1])
    assert body["errors"][0]["code"] == OCICode.TOOMANYREQUESTS
    assert BUSY_RESPONSE.startswith(b"HTTP/1.1 503 ")


def test_no_code_is_written_as_a_string_outside_its_declaration() -> None:
    """Every raise site uses the constants: no string literal in proxy/ is a code's wire string."""
    codes = {c.value for c in ALL}
    found = []
    for path in sorted(PROXY.rglob("*.py")):
        if path == PROXY / "oci" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in codes:
                found.append(f"{path.relative_to(PROXY)}:{node.lineno} {node.value}")
    assert not found


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (UpstreamError("r", "m"), "UPSTREAM_ERROR", 502),
        (CredentialsRejected("r", 401), "UPSTREAM_ERROR", 502),
        (RealmRefused("r", "realm.example"), "UPSTREAM_ERROR", 502),
        (UpstreamUnavailable("r", "m"), "UPSTREAM_ERROR", 502),
        (UpstreamTimeout("r", "m"), "UPSTREAM_TIMEOUT", 504),
        (EgressRefused("r", Refusal("address", "nope")), "UPSTREAM_ERROR", 502),
        (UpstreamBusy("r"), "UPSTREAM_UNAVAILABLE", 503),
    ],
)
def test_upstream_errors_carry_a_declared_code_and_its_status(error: UpstreamError, code: str, status: int) -> None:
    assert lookup(error.code) is error.code and (error.code, error.status) == (code, status)


class FakeUpstream:
    """What upstream_error reads of an aiohttp ClientResponse: status, headers, content.read()."""

    def __init__(self, status: int, code: str | None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = CIMultiDict(headers or {})
        self.content = self
        self._body = json.dumps({"errors": [{"code": code, "message": "upstream says"}]} if code else {}).encode()

    async def read(self, n: int = -1) -> bytes:
        return self._body


@pytest.mark.parametrize(
    ("status", "code", "kind", "want"),
    [
        (404, "MANIFEST_UNKNOWN", "manifests", (404, "MANIFEST_UNKNOWN")),
        (404, "NAME_UNKNOWN", "blobs", (404, "NAME_UNKNOWN")),
        (404, "WHATEVER", "blobs", (404, "BLOB_UNKNOWN")),
        (404, None, "tags", (404, "NAME_UNKNOWN")),
        (400, "NAME_INVALID", "manifests", (400, "NAME_INVALID")),  # relayed with the upstream's status
        (401, "DENIED", "manifests", (401, "DENIED")),
        (400, "SOME_VENDOR_CODE", "manifests", (502, "UPSTREAM_ERROR")),  # was relayed as is
        (400, "name_invalid", "manifests", (400, "NAME_INVALID")),  # upstreams' case is forgiven, as before
        (403, "DENIED", "manifests", (502, "UPSTREAM_ERROR")),
        (416, None, "blobs", (416, "RANGE_INVALID")),
        (429, "TOOMANYREQUESTS", "blobs", (429, "TOOMANYREQUESTS")),
        (500, "UNKNOWN", "blobs", (502, "UPSTREAM_ERROR")),
        (503, None, "blobs", (503, "UPSTREAM_UNAVAILABLE")),
    ],
)
async def test_upstream_answers_map_to_declared_codes(status: int, code: str | None, kind: str, want: tuple[int, str]):
    err = await upstream_error(FakeUpstream(status, code), kind, "vendor-up")  # type: ignore[arg-type]
    assert (err.status, err.code) == want
    assert lookup(err.code) is err.code
