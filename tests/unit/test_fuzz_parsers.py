"""Property-based fuzzing of everything that parses client or upstream input.

Each parser either answers or raises its documented error type (OCIError for
what a client sends, ConfigError for the environment), never anything else;
what can be written out is read back the same (round trips); the name, tag
and digest checks accept exactly what the OCI distribution spec's regexes
accept. Deterministic (derandomized, no example database) so CI is stable.
"""

from __future__ import annotations

import base64
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.auth.credentials import MAX_AUTH_HEADER, BasicCredentials, BearerCredentials, parse_authorization
from proxy.auth.endpoint import MAX_SCOPES, parse_scopes
from proxy.config import ConfigError, load
from proxy.oci.errors import OCIError, lookup
from proxy.oci.grammar import (
    MAX_NAME,
    Route,
    check_digest,
    check_name,
    check_page_size,
    decode_path,
    parse_route,
    split_proxy_name,
)
from proxy.pull.routes import _RANGE_RE, paginate
from proxy.upstream.challenge import parse_www_authenticate, pick

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# The distribution spec's own regexes, anchored with fullmatch (no `$` newline loophole).
SPEC_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
SPEC_NAME = re.compile(rf"{SPEC_COMPONENT}(?:/{SPEC_COMPONENT})*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
SPEC_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

# Text that leans towards the characters the grammar cares about, plus anything at all.
_GRAMMAR_ALPHABET = string.ascii_letters + string.digits + "._-/:+=@%?#\\ \n\t\x00é٣²"
# Inputs that broke real parsers elsewhere: trailing newlines (`$` matches before one),
# non-ASCII digits (str.isdigit() and `\d` accept them; int() may not), signs, blanks.
TRICKY = [
    "",
    " ",
    "\n",
    "a\n",
    "v1\n",
    "1\n",
    "\x00",
    "\u00b2",
    "\u0663",
    "\u0661\u0662",
    "-1",
    "+1",
    "1_0",
    " 1",
    "0x1",
    "..",
    "a//b",
    "A",
    "a/",
    "/a",
    "a__b",
    "a___b",
    "a--b",
    "a.-b",
    "é",
]
grammar_text = st.one_of(
    st.text(alphabet=_GRAMMAR_ALPHABET, max_size=80), st.text(max_size=80), st.sampled_from(TRICKY)
)
_alnum = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=6)
_separators = st.sampled_from([".", "_", "__", "-", "--"])
spec_components = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separators, _alnum), max_size=3),
)
spec_names = st.lists(spec_components, min_size=1, max_size=5).map("/".join).filter(lambda n: len(n) <= MAX_NAME)
spec_tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + string.digits + "_"),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", max_size=127),
)
hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
sha256_digests = hexes.map(lambda h: f"sha256:{h}")


def _oci_only(fn, *args):
    """Call `fn`; an OCIError must carry a declared code."""
    try:
        return fn(*args)
    except OCIError as exc:
        assert lookup(exc.code) is exc.code, exc.code
        assert 400 <= exc.status < 600
        return exc


# --- names, tags, digests, paths ----------------------------------------------------------


@FUZZ
@given(st.one_of(grammar_text, spec_names, spec_names.map(lambda n: n + "\n")))
def test_check_name_is_the_spec_regex(name: str):
    got = _oci_only(check_name, name)
    spec_ok = SPEC_NAME.fullmatch(name) is not None and len(name) <= MAX_NAME
    assert (got is None) == spec_ok, repr(name)


@FUZZ
@given(spec_names)
def test_every_spec_name_is_accepted(name: str):
    check_name(name)


@FUZZ
@given(st.one_of(grammar_text, sha256_digests, sha256_digests.map(lambda d: d + "\n"), sha256_digests.map(str.upper)))
def test_check_digest_accepts_only_known_well_formed_digests(digest: str):
    got = _oci_only(check_digest, digest)
    algo, _, hexpart = digest.partition(":")
    want = {"sha256": 64, "sha512": 128}.get(algo)
    ok = SPEC_DIGEST.fullmatch(digest) is not None and want == len(hexpart) and re.fullmatch("[a-f0-9]+", hexpart)
    assert (got is None) == bool(ok), repr(digest)


@FUZZ
@given(grammar_text)
def test_decode_path_refuses_or_returns_clean_text(raw: str):
    got = _oci_only(decode_path, raw)
    if isinstance(got, str):
        assert "%" not in got and "\\" not in got and "\x00" not in got


@FUZZ
@given(st.one_of(grammar_text.map(lambda t: "/v2/" + t), grammar_text))
def test_parse_route_answers_only_spec_valid_routes(path: str):
    got = _oci_only(parse_route, path)
    if isinstance(got, Route):
        assert SPEC_NAME.fullmatch(got.name) and len(got.name) <= MAX_NAME
        if got.kind == "manifests":
            assert SPEC_TAG.fullmatch(got.reference) or SPEC_DIGEST.fullmatch(got.reference)
        elif got.kind in ("blobs", "referrers"):
            assert SPEC_DIGEST.fullmatch(got.reference)
        else:
            assert got.kind == "tags" and got.reference is None


@FUZZ
@given(spec_names, st.one_of(spec_tags, sha256_digests), st.sampled_from(["manifests", "blobs", "referrers", "tags"]))
def test_parse_route_round_trips(name: str, ref: str, kind: str):
    if kind in ("blobs", "referrers") and not ref.startswith("sha256:"):
        ref = "sha256:" + "0" * 64
    path = f"/v2/{name}/tags/list" if kind == "tags" else f"/v2/{name}/{kind}/{ref}"
    assert parse_route(path) == Route(name=name, kind=kind, reference=None if kind == "tags" else ref)


@FUZZ
@given(spec_names, st.one_of(grammar_text, spec_tags, spec_tags.map(lambda t: t + "\n")))
def test_manifest_reference_is_a_spec_tag_or_digest(name: str, ref: str):
    got = _oci_only(parse_route, f"/v2/{name}/manifests/{ref}")
    if isinstance(got, Route):
        assert SPEC_TAG.fullmatch(ref) or SPEC_DIGEST.fullmatch(ref), repr(ref)
    elif "/" not in ref and ":" not in ref and ref:
        assert not SPEC_TAG.fullmatch(ref), repr(ref)


@FUZZ
@given(st.lists(spec_names, min_size=1, max_size=4).map("/".join))
def test_split_proxy_name_round_trips(name: str):
    got = _oci_only(split_proxy_name, name)
    if name.startswith("proxy/") and name.count("/") >= 2:
        assert got.full == name
    else:
        assert isinstance(got, OCIError) and got.code == "NAME_UNKNOWN"


# --- query parameters -------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.none(), grammar_text, st.integers(min_value=0, max_value=10**8).map(str)))
def test_page_size_is_a_small_ascii_integer(n: str | None):
    got = _oci_only(check_page_size, n)
    ok = n is None or re.fullmatch(r"[0-9]{1,6}", n) is not None
    assert (got is None) == ok, repr(n)
    if ok:
        # What passed the check is usable: pagination never raises on it.
        page, _ = paginate(["a", "b", "c"], n, None, "/v2/x/tags/list")
        assert len(page) <= 3


@FUZZ
@given(st.lists(st.text(max_size=8), max_size=6), st.one_of(st.none(), st.text(max_size=8)))
def test_paginate_is_sorted_after_last(items: list[str], last: str | None):
    page, _ = paginate(items, "2", last, "/v2/x/tags/list")
    assert page == sorted(page) and len(page) <= 2
    assert all(last is None or t > last for t in page)


scope_names = st.one_of(spec_names, grammar_text)
actions = st.lists(st.sampled_from(["pull", "push", "*", "delete", ""]), max_size=3).map(",".join)


@FUZZ
@given(
    st.lists(
        st.one_of(
            grammar_text,
            st.tuples(st.sampled_from(["repository", "registry"]), scope_names, actions).map(lambda t: ":".join(t)),
        ),
        max_size=20,
    )
)
def test_parse_scopes_raises_only_oci_errors(raw: list[str]):
    got = _oci_only(parse_scopes, raw)
    if isinstance(got, list):
        assert len(got) <= MAX_SCOPES
        for kind, name, acts in got:
            assert kind is not None and name and isinstance(acts, set)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["repository", "registry"]), spec_names, actions), min_size=1, max_size=5))
def test_parse_scopes_round_trips(scopes: list[tuple[str, str, str]]):
    raw = [" ".join(f"{k}:{n}:{a}" for k, n, a in scopes)]
    assert parse_scopes(raw) == [(k, n, {x for x in a.split(",") if x}) for k, n, a in scopes]


# --- headers ----------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        st.none(),
        grammar_text,
        st.text(max_size=40).map(lambda t: "Basic " + t),
        st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
        st.text(max_size=40).map(lambda t: "Bearer " + t),
        st.just("x" * (MAX_AUTH_HEADER + 1)),
    )
)
def test_authorization_raises_only_unauthorized(header: str | None):
    got = _oci_only(parse_authorization, header)
    if isinstance(got, OCIError):
        assert got.code == "UNAUTHORIZED"
        assert header is None or len(header) < 8 or header not in got.message  # never echoes a credential
    elif got is not None:
        assert "***" in repr(got)


@FUZZ
@given(st.text(max_size=30).filter(lambda u: ":" not in u), st.text(min_size=1, max_size=60))
def test_basic_credentials_round_trip(username: str, password: str):
    header = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    assert parse_authorization(header) == BasicCredentials(username, password)


@FUZZ
@given(st.text(alphabet=string.ascii_letters + string.digits + "-._~+/=", min_size=1, max_size=200))
def test_bearer_round_trip(token: str):
    assert parse_authorization(f"Bearer {token}") == BearerCredentials(token)


_challenge_token = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=1, max_size=12)
_challenge_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


@FUZZ
@given(st.lists(st.text(max_size=120), max_size=3))
def test_www_authenticate_never_raises(values: list[str]):
    for c in parse_www_authenticate(values):
        assert c.scheme == c.scheme.lower() and c.scheme
    pick(parse_www_authenticate(values))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Bearer", "Basic", "Negotiate", "bearer"]),
            st.dictionaries(_challenge_token.map(str.lower), _challenge_value, min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_www_authenticate_round_trips(challenges: list[tuple[str, dict[str, str]]]):
    header = ", ".join(
        f"{scheme} " + ", ".join(f"{k}={_quote(v)}" for k, v in params.items()) for scheme, params in challenges
    )
    got = parse_www_authenticate(header)
    assert [(c.scheme, c.params) for c in got] == [(s.lower(), p) for s, p in challenges]
    chosen = pick(got)
    schemes = [s.lower() for s, _ in challenges]
    assert chosen is not None or not ({"bearer", "basic"} & set(schemes))
    if "bearer" in schemes:
        assert chosen is not None and chosen.scheme == "bearer"


@FUZZ
@given(
    st.one_of(
        grammar_text.map(lambda t: "bytes=" + t),
        grammar_text,
        st.sampled_from(["bytes=\u0661-\u0662", "bytes=0-1\n"]),
        st.tuples(st.integers(0, 2**63), st.integers(0, 2**63)).map(lambda t: f"bytes={t[0]}-{t[1]}"),
    )
)
def test_range_accepts_only_one_ascii_byte_range(value: str):
    ok = re.fullmatch(r"bytes=(?:[0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})", value.strip(), re.ASCII) is not None
    assert (_RANGE_RE.match(value.strip()) is not None) == ok, repr(value)


# --- configuration from the environment -------------------------------------------------

_ENV_KEYS = [
    "PULLGATE_STORE",
    "PULLGATE_PROXY_LISTEN",
    "PULLGATE_PROXY_HOSTS",
    "PULLGATE_PROXY_TRUSTED_PROXIES",
    "PULLGATE_PROXY_SHUTDOWN_GRACE_SECONDS",
    "PULLGATE_ADMIN_LISTEN",
    "PULLGATE_AUTH_TOKEN_TTL_SECONDS",
    "PULLGATE_AUTH_LICENSE_CACHE_SECONDS",
    "PULLGATE_UPSTREAM_CHUNK_SIZE",
    "PULLGATE_LOG_LEVEL",
    "PULLGATE_LOG_ACCESS_LOG",
    "PULLGATE_PULLLOG_FLUSH_SECONDS",
    "PULLGATE_DOMAINS_RESOLVER",
    "PULLGATE_KEYS_FILE",
    "PULLGATE_CACHE_BACKEND",
    "PULLGATE_CACHE_TAG_TTL",
    "PULLGATE_CACHE_S3",
    "PULLGATE_CACHE_S3_BUCKET",
    "PULLGATE_CACHE_S3_ENDPOINT_URL",
    "PULLGATE_CACHE_S3_REDIRECT",
    "PULLGATE_CACHE_S3_SECRET_ACCESS_KEY_ENV",
    "PULLGATE_STORE_URL",
    "PULLGATE_NOPE_KEY",
    "PULLGATE_PROXY_NOPE",
    "PULLGATE_BOOTSTRAP_TEAMS",
    "PULLGATE_",
]
_yamlish = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "[",
            "{a: 1}",
            "[1, 2]",
            "- x",
            "2001-13-01",
            "2020-02-30T25:00:00Z",
            "0x1F",
            ".nan",
            ".inf",
            "1e400",
            "true",
            "~",
            "!!python/object:os.system",
            "&a [*a]",
            "'",
            "\x00",
            "12:34:56",
        ]
    ),
)


@FUZZ
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(_ENV_KEYS), st.text(max_size=12).map(lambda t: "PULLGATE_" + t)), _yamlish, max_size=4
    )
)
def test_env_overrides_raise_only_config_errors(environ: dict[str, str]):
    try:
        load(None, environ)
    except ConfigError:
        pass


@pytest.mark.parametrize("value", ["2001-13-01", "2020-02-30"])
def test_env_override_with_an_impossible_date_is_a_config_error(value: str):
    with pytest.raises(ConfigError, match=r"auth\.token_ttl_seconds"):
        load(None, {"PULLGATE_AUTH_TOKEN_TTL_SECONDS": value})
