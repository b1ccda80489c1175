"""Units with no registry behind them: challenge parsing, realm trust, the token cache,
name grammar, resolution and scopes. The auth flows themselves: test_auth_flows.py."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from yarl import URL

from proxy.auth.endpoint import grant, parse_scopes
from proxy.oci.errors import OCIError
from proxy.oci.grammar import ProxyName, check_digest, check_name, decode_path, parse_route, split_proxy_name
from proxy.pull.resolve import resolve
from proxy.store.models import Customer, Registry
from proxy.upstream.challenge import Challenge, parse_www_authenticate, pick
from proxy.upstream.errors import UpstreamError
from proxy.upstream.providers.base import RegistryCredentials
from proxy.upstream.realm import realm_allowed
from proxy.upstream.tokens import CachedToken, TokenCache, usable_until

SHA256 = "sha256:" + "a" * 64

# --- WWW-Authenticate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/redis:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/redis:pull",
            },
        ),
        (
            'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"',
            "bearer",
            {"realm": "https://ghcr.io/token", "service": "ghcr.io", "scope": "repository:user/image:pull"},
        ),
        (
            'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
            "bearer",
            {"realm": "https://quay.io/v2/auth", "service": "quay.io"},
        ),
        (
            'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"',
            "basic",
            {"realm": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/", "service": "ecr.amazonaws.com"},
        ),
        (
            'Bearer realm="https://us-docker.pkg.dev/v2/token",service="us-docker.pkg.dev"',
            "bearer",
            {"realm": "https://us-docker.pkg.dev/v2/token", "service": "us-docker.pkg.dev"},
        ),
        ('BEARER Realm = "r" , Service=s', "bearer", {"realm": "r", "service": "s"}),
        ('Bearer realm="a\\"b\\\\c",service="x"', "bearer", {"realm": 'a"b\\c', "service": "x"}),
        (
            'Bearer realm="r",scope="repository:a:pull,push repository:b:pull"',
            "bearer",
            {"realm": "r", "scope": "repository:a:pull,push repository:b:pull"},
        ),
        ('Bearer realm="r",error="insufficient_scope"', "bearer", {"realm": "r", "error": "insufficient_scope"}),
    ],
)
def test_real_world_challenges(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_www_authenticate(header) == [Challenge(scheme=scheme, params=params)]


def test_several_challenges() -> None:
    got = parse_www_authenticate('Basic realm="b, still b", Bearer realm="https://r/t",service="s,t"')
    assert got == [
        Challenge("basic", {"realm": "b, still b"}),
        Challenge("bearer", {"realm": "https://r/t", "service": "s,t"}),
    ]
    # Separate header lines, and a token68 scheme first.
    got = parse_www_authenticate(["Negotiate abc123==", 'Bearer realm="r"'])
    assert [c.scheme for c in got] == ["negotiate", "bearer"] and got[1].params == {"realm": "r"}
    assert parse_www_authenticate('Negotiate abc123==, Bearer realm="r"')[1] == Challenge("bearer", {"realm": "r"})


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        ",,,",
        "Bearer",
        "Bearer realm=",
        'Bearer realm="unterminated',
        "=== garbage",
        '"x"',
        'Bearer ,realm="x"',
        'Bearer realm="x"\x00',
        "B\xe9arer realm=x",
        "Bearer " + "a=b," * 2000,
    ],
)
def test_malformed_challenges_do_not_crash(header: str) -> None:
    got = parse_www_authenticate(header)
    assert isinstance(got, list)
    chosen = pick(got)
    # Whatever is found, nothing is invented: a realm only appears if the header held one.
    if chosen is not None and "realm" in chosen.params:
        assert chosen.params["realm"] in header


def test_pick_prefers_bearer() -> None:
    both = parse_www_authenticate('Basic realm="b", Bearer realm="t"')
    assert pick(both) == Challenge("bearer", {"realm": "t"})
    assert pick(parse_www_authenticate('Basic realm="b"')) == Challenge("basic", {"realm": "b"})
    assert pick(parse_www_authenticate("Negotiate abc==")) is None
    assert pick([]) is None


# --- realm trust --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "realm", "insecure", "allowed"),
    [
        ("https://ghcr.io", "https://ghcr.io/token", False, True),
        ("https://registry-1.docker.io", "https://auth.docker.io/token", False, True),
        ("https://quay.io", "https://quay.io/v2/auth", False, True),
        ("https://us-docker.pkg.dev", "https://us-docker.pkg.dev/v2/token", False, True),
        ("https://registry-1.docker.io", "https://evil.example/token", False, False),
        ("https://registry-1.docker.io", "https://registry-1.docker.io.evil.example/token", False, False),
        ("https://foo.github.io", "https://bar.github.io/token", False, False),  # public suffix: not one domain
        ("https://ghcr.io", "http://ghcr.io/token", False, False),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/token", True, True),
        ("https://ghcr.io", "https://user:pw@ghcr.io/token", False, False),
        ("https://ghcr.io", "https://user@ghcr.io/token", False, False),
        ("http://127.0.0.1:5000", "http://127.0.0.1:6000/token", True, True),
        ("http://127.0.0.1:5000", "http://127.0.0.2:5000/token", True, False),
        ("http://127.0.0.1:5000", "http://localhost:5000/token", True, False),
        ("https://ghcr.io", "", False, False),
        ("https://ghcr.io", "/token", False, False),
        ("https://ghcr.io", "ftp://ghcr.io/token", False, False),
    ],
)
def test_realm_allowed(registry: str, realm: str, insecure: bool, allowed: bool) -> None:
    assert realm_allowed(URL(registry), URL(realm), insecure) is allowed


# --- token cache ------------------------------------------------------------------------------------


class Fetcher:
    """A fetch function that counts calls and can be held open or made to fail."""

    def __init__(self, lifetime: float = 1e9, fail: int = 0) -> None:
        self.calls = 0
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()
        self.lifetime = lifetime

    async def __call__(self) -> CachedToken:
        self.calls += 1
        await self.release.wait()
        if self.calls <= self.fail:
            raise UpstreamError("r", f"boom {self.calls}")
        return CachedToken(header=f"Bearer t{self.calls}", expires_at=self.lifetime)


async def test_cache_fetches_once_for_fifty_waiters() -> None:
    cache, fetch = TokenCache(), Fetcher()
    fetch.release.clear()
    tasks = [asyncio.create_task(cache.get(("r", "s"), fetch)) for _ in range(50)]
    await asyncio.sleep(0.01)
    fetch.release.set()
    got = await asyncio.gather(*tasks)
    assert fetch.calls == 1 and cache.fetches == 1
    assert {t.header for t in got} == {"Bearer t1"}
    assert (await cache.get(("r", "s"), fetch)).header == "Bearer t1" and fetch.calls == 1
    assert (await cache.get(("r", "other-scope"), fetch)).header == "Bearer t2"


async def test_cache_failure_reaches_every_waiter_then_retries() -> None:
    cache, fetch = TokenCache(), Fetcher(fail=1)
    fetch.release.clear()
    tasks = [asyncio.create_task(cache.get(("r", "s"), fetch)) for _ in range(10)]
    await asyncio.sleep(0.01)
    fetch.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert fetch.calls == 1
    assert all(isinstance(r, UpstreamError) and r.message == "boom 1" for r in results)
    assert (await cache.get(("r", "s"), fetch)).header == "Bearer t2" and fetch.calls == 2


async def test_cache_cancelled_fetcher_does_not_cancel_other_waiters() -> None:
    # The first caller's client goes away mid-fetch; the other pulls still need their token.
    cache, fetch = TokenCache(), Fetcher()
    fetch.release.clear()
    first = asyncio.create_task(cache.get(("r", "s"), fetch))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get(("r", "s"), fetch))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0.01)
    fetch.release.set()
    assert (await asyncio.wait_for(second, 5)).header.startswith("Bearer t")


async def test_cache_stale_forces_exactly_one_refetch() -> None:
    cache, fetch = TokenCache(), Fetcher()
    first = await cache.get(("r", "s"), fetch)
    # Many requests saw the same 401 with the same token: one refetch for all.
    fetch.release.clear()
    tasks = [asyncio.create_task(cache.get(("r", "s"), fetch, stale=first.header)) for _ in range(20)]
    await asyncio.sleep(0.01)
    fetch.release.set()
    assert {t.header for t in await asyncio.gather(*tasks)} == {"Bearer t2"} and fetch.calls == 2
    # A latecomer with the old stale token gets the refreshed one without another fetch.
    assert (await cache.get(("r", "s"), fetch, stale=first.header)).header == "Bearer t2"
    assert (await cache.get(("r", "s"), fetch, stale="Bearer unrelated")).header == "Bearer t2"
    assert fetch.calls == 2


async def test_cache_expiry_with_injected_clock() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    fetch = Fetcher(lifetime=1100.0)
    assert (await cache.get(("r", "s"), fetch)).header == "Bearer t1"
    now[0] = 1099.9
    assert cache.peek(("r", "s")) is not None
    assert (await cache.get(("r", "s"), fetch)).header == "Bearer t1"
    now[0] = 1100.0
    assert cache.peek(("r", "s")) is None
    assert (await cache.get(("r", "s"), fetch)).header == "Bearer t2" and fetch.calls == 2
    cache.forget_registry("r")
    now[0] = 0.0
    assert cache.peek(("r", "s")) is None


@pytest.mark.parametrize(
    ("lifetime", "until"),
    [(300, 240), (3600, 3540), (60, 48), (10, 8), (3, 2), (1, 1), (0.5, 1)],
)
def test_usable_until_margins(lifetime: float, until: float) -> None:
    assert usable_until(100.0, lifetime) == pytest.approx(100.0 + until)


def test_registry_credentials_repr_hides_password() -> None:
    creds = RegistryCredentials("vendor", "pw-canary-123")
    assert "pw-canary-123" not in repr(creds) and "pw-canary-123" not in str(creds) and "vendor" in repr(creds)
    assert "pw-canary-123" not in f"{creds!r} {[creds]}"
    assert RegistryCredentials(None, None).present is False


# --- grammar ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "library/redis", "proxy/my-app/vendor.io/a__b/c.d-e", "a0/b-c---d", "x" * 255])
def test_check_name_accepts(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize(
    "name", ["", "A", "a/", "/a", "a//b", "a/../b", "..", "-a", "a-", "a_", "a___b", "a.-b", "a:b", "a b", "x" * 256]
)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(OCIError) as exc:
        check_name(name)
    assert exc.value.code == "NAME_INVALID" and exc.value.status == 400


def test_check_digest() -> None:
    check_digest(SHA256)
    check_digest("sha512:" + "0" * 128)
    for bad in (
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "g" * 64,
        "md5:" + "a" * 32,
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "SHA256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
    ):
        with pytest.raises(OCIError) as exc:
            check_digest(bad)
        assert exc.value.code == "DIGEST_INVALID", bad


@pytest.mark.parametrize(
    ("path", "kind", "name", "ref"),
    [
        ("/v2/proxy/app/reg/repo/manifests/latest", "manifests", "proxy/app/reg/repo", "latest"),
        (f"/v2/proxy/app/reg/repo/manifests/{SHA256}", "manifests", "proxy/app/reg/repo", SHA256),
        (f"/v2/a/b/blobs/{SHA256}", "blobs", "a/b", SHA256),
        (f"/v2/a/referrers/{SHA256}", "referrers", "a", SHA256),
        ("/v2/a/b/tags/list", "tags", "a/b", None),
        ("/v2/a/manifests/b/manifests/v1", "manifests", "a/manifests/b", "v1"),
    ],
)
def test_parse_route(path: str, kind: str, name: str, ref: str | None) -> None:
    route = parse_route(path)
    assert (route.kind, route.name, route.reference) == (kind, name, ref)


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        ("/v2/", "NAME_UNKNOWN", 404),
        ("/v2/a/b", "NAME_UNKNOWN", 404),
        ("/v2/a/blobs/", "NAME_UNKNOWN", 404),
        ("/v2/A/manifests/v1", "NAME_INVALID", 400),
        ("/v2/a/../b/manifests/v1", "NAME_INVALID", 400),
        ("/v2/a/blobs/sha256:abc", "DIGEST_INVALID", 400),
        ("/v2/a/blobs/latest", "DIGEST_INVALID", 400),
        ("/v2/a/manifests/sha256:xyz", "DIGEST_INVALID", 400),
        ("/v2/a/manifests/-bad", "MANIFEST_UNKNOWN", 404),
        ("/v2/a/manifests/" + "t" * 129, "MANIFEST_UNKNOWN", 404),
    ],
)
def test_parse_route_refusals(path: str, code: str, status: int) -> None:
    with pytest.raises(OCIError) as exc:
        parse_route(path)
    assert (exc.value.code, exc.value.status) == (code, status)


def test_decode_path() -> None:
    assert decode_path("/v2/a/b/manifests/v1?x=%2F") == "/v2/a/b/manifests/v1"
    assert decode_path("/v2/a%2Fb/tags/list") == "/v2/a/b/tags/list"
    assert decode_path("/v2/%2e%2e/manifests/v1") == "/v2/../manifests/v1"  # then refused by parse_route
    with pytest.raises(OCIError, match="NAME_INVALID"):
        parse_route(decode_path("/v2/proxy/%2e%2e/x/manifests/v1"))
    for bad in ("/v2/%252e%252e/manifests/v1", "/v2/%ff/tags/list", "/v2/a%00/tags/list", "/v2/a%5cb/tags/list"):
        with pytest.raises(OCIError) as exc:
            decode_path(bad)
        assert exc.value.code == "NAME_INVALID", bad


# --- resolution ---------------------------------------------------------------------------------------


def _reg(slug: str, endpoint: str, provider: str = "other") -> Registry:
    return Registry(
        id=f"id-{slug}",
        team_id="t",
        slug=slug,
        provider=provider,
        endpoint=endpoint,
        url=f"https://{endpoint}",
        insecure=False,
        username=None,
        secret_sealed=None,
    )


REGS = [
    _reg("hub", "docker.io", "dockerhub"),
    _reg("quay", "quay.io", "quay"),
    _reg("vendor", "registry.acme.example"),
    _reg("quay.io", "decoy.example"),  # a slug that looks like another registry's endpoint wins
]


@pytest.mark.parametrize(
    ("name", "slug", "repo"),
    [
        ("proxy/app/vendor/team/img", "vendor", "team/img"),
        ("proxy/app/registry.acme.example/team/img", "vendor", "team/img"),
        ("proxy/app/quay.io/org/img", "quay.io", "org/img"),
        ("proxy/app/docker.io/redis", "hub", "library/redis"),
        ("proxy/app/index.docker.io/redis", "hub", "library/redis"),
        ("proxy/app/registry-1.docker.io/bitnami/redis", "hub", "bitnami/redis"),
        ("proxy/app/hub/nginx", "hub", "library/nginx"),
        ("proxy/app/redis", "hub", "library/redis"),
        ("proxy/app/bitnami/redis", "hub", "bitnami/redis"),
    ],
)
def test_resolve(name: str, slug: str, repo: str) -> None:
    reg, got = resolve(REGS, split_proxy_name(name))
    assert (reg.slug, got) == (slug, repo)


@pytest.mark.parametrize(
    ("regs", "name"),
    [
        (REGS, "proxy/app/evil.example/x"),
        (REGS, "proxy/app/vendor"),
        (REGS[1:], "proxy/app/redis"),
        (REGS[1:], "proxy/app/docker.io/redis"),
        ([], "proxy/app/vendor/x"),
    ],
)
def test_resolve_name_unknown(regs: list[Registry], name: str) -> None:
    with pytest.raises(OCIError) as exc:
        resolve(regs, split_proxy_name(name))
    assert (exc.value.code, exc.value.status) == ("NAME_UNKNOWN", 404)


def test_split_proxy_name() -> None:
    assert split_proxy_name("proxy/app/redis") == ProxyName("app", "redis", "")
    assert split_proxy_name("proxy/app/r/a/b").full == "proxy/app/r/a/b"
    for bad in ("library/redis", "proxy/app", "other/app/redis"):
        with pytest.raises(OCIError, match="NAME_UNKNOWN"):
            split_proxy_name(bad)


# --- /v2/token scopes ----------------------------------------------------------------------------------

CUSTOMER = Customer(
    id="c1",
    team_id="t",
    app_id="a1",
    app_slug="myapp",
    name="C",
    email=None,
    license_type="prod",
    expires_at=dt.datetime(2099, 1, 1, tzinfo=dt.UTC),
    status="active",
)


def test_parse_scopes() -> None:
    got = parse_scopes(["repository:proxy/myapp/r/a:pull repository:proxy/myapp/r/b:pull,push", "registry:catalog:*"])
    assert got == [
        ("repository", "proxy/myapp/r/a", {"pull"}),
        ("repository", "proxy/myapp/r/b", {"pull", "push"}),
        ("registry", "catalog", {"*"}),
    ]
    assert parse_scopes([]) == []
    for bad in (["nocolon"], ["repository:name-only"], ["repository::pull"]):
        with pytest.raises(OCIError) as exc:
            parse_scopes(bad)
        assert exc.value.status == 400
    with pytest.raises(OCIError):
        parse_scopes([" ".join(f"repository:proxy/myapp/r/{i}:pull" for i in range(17))])


def test_grant() -> None:
    scopes = parse_scopes(
        [
            "repository:proxy/myapp/r/a:pull repository:proxy/myapp/r/b:push registry:catalog:*",
            "repository:proxy/myapp/r/c:*",
        ]
    )
    assert [(a.type, a.name, a.actions) for a in grant(CUSTOMER, scopes)] == [
        ("repository", "proxy/myapp/r/a", ("pull",)),
        ("registry", "catalog", ("*",)),  # Harbor and Nexus list the app's repositories
        ("repository", "proxy/myapp/r/c", ("pull",)),
    ]
    # Without a license only anonymous repositories are granted; the catalog is not.
    anon = parse_scopes(["repository:anonymous/pub/x:pull registry:catalog:*"])
    assert [(a.type, a.name) for a in grant(None, anon)] == [("repository", "anonymous/pub/x")]
    with pytest.raises(OCIError) as exc:
        grant(None, parse_scopes(["repository:proxy/myapp/r/a:pull"]))
    assert exc.value.status == 401
    assert grant(CUSTOMER, parse_scopes(["repository:proxy/myapp/r/b:push,delete"])) == []
    # The Docker token spec: what cannot be granted is left out, never an error (another app's
    # repository, an invalid name, a name that is no proxy name: containerd's mirror asks for one).
    mixed = "repository:proxy/myapp/r/a:pull repository:proxy/otherapp/r/a:pull repository:proxy/myapp/R/A:pull"
    assert [a.name for a in grant(CUSTOMER, parse_scopes([mixed, "repository:vendor/api:pull"]))] == ["proxy/myapp/r/a"]
