"""Every provider's auth, challenge shape and quirks, against real registries on
loopback with each provider's endpoint name mapped to a loopback URL."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.support import skopeo
from tests.support.canaries import assert_no_secrets
from tests.support.client import basic
from tests.support.fronts import CDN, DenyingFront, ECRApiFront, RateLimitedFront, RedirectingFront
from tests.support.images import PushedImage, oci_image
from tests.support.poll import apoll
from tests.support.procs import ManagedProcess, free_port, wait_http
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry
from tests.support.token_server import TokenServer

ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
ECR_KEY_ID = "AKIAPULLGATETEST0001"
LICENSE = "lic-providers-" + secrets.token_hex(12)

# (slug, provider, endpoint, token realm path, token service, username)
TOKEN_PROVIDERS = [
    ("hub", "dockerhub", "docker.io", "/token", "registry.docker.io", "vendoruser"),
    ("gh", "ghcr", "ghcr.io", "/token", "ghcr.io", "vendor-bot"),
    ("quay", "quay", "quay.io", "/v2/auth", "quay.io", "vendor+robot"),
    ("gcr", "gcr", "gcr.io", "/v2/token", "gcr.io", "_json_key"),
    ("gar", "gar", "us-docker.pkg.dev", "/v2/token", "us-docker.pkg.dev", "oauth2accesstoken"),
]


def _gcr_key() -> str:
    # Shaped like a service-account key; the private key is a canary.
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "vendor-proj",
            "client_email": "puller@vendor-proj.iam.gserviceaccount.com",
            "private_key_id": secrets.token_hex(20),
            "private_key": f"-----BEGIN PRIVATE KEY-----\ncanary-{secrets.token_hex(16)}\n-----END PRIVATE KEY-----\n",
        }
    )


@dataclass
class Providers:
    server: Pullgate
    images: dict[str, PushedImage]
    token_servers: dict[str, TokenServer]
    ecr_api: ECRApiFront
    cdn: CDN
    fronts: dict[str, RedirectingFront]
    canaries: list[str] = field(default_factory=list)

    def ref(self, slug: str) -> str:
        img = self.images[slug]
        return f"docker://{self.server.host}/proxy/vendorapp/{slug}/{img.repo}:{img.tag}"

    def assert_clean(self, text: str, where: str) -> None:
        assert_no_secrets(text, self.canaries, where)


def _moto_token(url: str) -> str:
    req = urllib.request.Request(  # noqa: S310 - loopback moto
        url + "/",
        data=b"{}",
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/ecr/aws4_request",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        token = json.loads(r.read())["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().partition(":")[2]


@pytest.fixture(scope="module")
def providers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    tmp = tmp_path_factory.mktemp("providers")
    stack: list = []
    try:
        passwords: dict[str, str] = {}
        registries: dict[str, Registry] = {}
        token_servers: dict[str, TokenServer] = {}
        images: dict[str, PushedImage] = {}
        for slug, _provider, _endpoint, realm, service, user in TOKEN_PROVIDERS:
            passwords[slug] = _gcr_key() if user == "_json_key" else f"canary-{slug}-{secrets.token_hex(8)}"
            ts = TokenServer({user: passwords[slug]}, service=service, realm_path=realm, cert_path=tmp / f"{slug}.pem")
            stack.append(ts)
            reg = Registry(
                "token",
                username=user,
                password=passwords[slug],
                token_server=ts,
                service=service,
                issuer=ts.issuer,
                name=slug,
            )
            stack.append(reg)
            token_servers[slug], registries[slug] = ts, reg
            repo = "library/redis" if slug == "hub" else f"{user.strip('_').replace('+', '-')}/app"
            images[slug] = oci_image(reg, repo, "v1", layers=[(300_000, slug)])
            if slug == "gh":  # never pulled before the wrong-credentials test
                images["gh-unpulled"] = oci_image(reg, f"{repo}-unpulled", "v1", layers=[(1000, "u")])

        # ECR: moto answers GetAuthorizationToken; the registry accepts what moto issued.
        moto_port = free_port()
        moto = ManagedProcess(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)], tmp, "moto"
        )
        stack.append(moto)
        moto_url = f"http://127.0.0.1:{moto_port}"
        wait_http(moto_url + "/moto-api/", timeout=30, proc=moto)
        ecr_secret = f"canary-ecr-secret-{secrets.token_hex(12)}"
        ecr_api = ECRApiFront(moto_url, ECR_KEY_ID, ecr_secret, lifetime=2.0)
        stack.append(ecr_api)
        ecr_reg = Registry("htpasswd", username="AWS", password=_moto_token(moto_url), name="ecr")
        stack.append(ecr_reg)
        images["ecr"] = oci_image(ecr_reg, "vendor/ecr-app", "v1", layers=[(300_000, "ecr")])

        # Redirect quirks: a CDN that refuses credentials, and a relative Location.
        anon = Registry("none", name="redirect-origin")
        stack.append(anon)
        cdn = CDN(anon.url)
        stack.append(cdn)
        fronts = {}
        for slug, use_cdn in (("cdn", True), ("rel", False)):
            passwords[slug] = f"canary-{slug}-{secrets.token_hex(8)}"
            user = "vendor" if use_cdn else "oauth2accesstoken"
            fronts[slug] = RedirectingFront(anon.url, user, passwords[slug], cdn if use_cdn else None)
            stack.append(fronts[slug])
            images[slug] = oci_image(anon, f"redirect/{slug}", "v1", layers=[(1_500_000, slug), (200_000, slug + "2")])

        denying = DenyingFront()
        stack.append(denying)
        limited = RateLimitedFront(anon.url, allowance=3)
        stack.append(limited)
        images["hub-limited"] = oci_image(anon, "vendor/limited", "v1", layers=[(1000, "limited")])

        env = {"PROVIDERS_LICENSE": LICENSE, "ECR_SECRET": ecr_secret}
        regs_cfg = []
        for slug, provider, endpoint, _realm, _service, user in TOKEN_PROVIDERS:
            env[f"PW_{slug.upper()}"] = passwords[slug]
            regs_cfg.append(
                {
                    "slug": slug,
                    "provider": provider,
                    "endpoint": endpoint,
                    "url": registries[slug].url,
                    "insecure": True,
                    "username": user,
                    "password_env": f"PW_{slug.upper()}",
                }
            )
        regs_cfg.append(
            {
                "slug": "ecr",
                "provider": "ecr",
                "endpoint": ECR_HOST,
                "url": ecr_reg.url,
                "insecure": True,
                "access_key_id": ECR_KEY_ID,
                "secret_access_key_env": "ECR_SECRET",
                "api_url": ecr_api.url + "/",
            }
        )
        env["PW_CDN"], env["PW_REL"] = passwords["cdn"], passwords["rel"]
        regs_cfg.append(
            {
                "slug": "cdn",
                "provider": "other",
                "endpoint": "registry.cdn.test",
                "url": fronts["cdn"].url,
                "insecure": True,
                "username": "vendor",
                "password_env": "PW_CDN",
            }
        )
        regs_cfg.append(
            {
                "slug": "rel",
                "provider": "gar",
                "endpoint": "europe-docker.pkg.dev",
                "url": fronts["rel"].url,
                "insecure": True,
                "username": "oauth2accesstoken",
                "password_env": "PW_REL",
            }
        )
        env["PW_GH_DENIED"] = f"canary-gh-denied-{secrets.token_hex(8)}"
        passwords["gh-denied"] = env["PW_GH_DENIED"]
        regs_cfg.append(
            {
                "slug": "gh-denied",
                "provider": "ghcr",
                "endpoint": "ghcr.io",
                "url": denying.url,
                "insecure": True,
                "username": "vendor-bot",
                "password_env": "PW_GH_DENIED",
            }
        )
        regs_cfg.append(
            {
                "slug": "hub-limited",
                "provider": "dockerhub",
                "endpoint": "registry-1.docker.io",
                "url": limited.url,
                "insecure": True,
            }
        )
        teams = [
            {
                "name": "vendor",
                "apps": [{"slug": "vendorapp"}],
                "registries": regs_cfg,
                "customers": [{"name": "C", "app": "vendorapp", "license_id_env": "PROVIDERS_LICENSE"}],
            }
        ]
        server = Pullgate(tmp / "pullgate", teams, env=env).start()
        stack.append(server)
        canaries = [*passwords.values(), ecr_secret, LICENSE]
        canaries += [json.loads(passwords["gcr"])["private_key"].splitlines()[1]]
        yield Providers(server, images, token_servers, ecr_api, cdn, fronts, canaries)
        Providers(server, images, token_servers, ecr_api, cdn, fronts, canaries).assert_clean(
            server.log_text(), "the proxy's log"
        )
    finally:
        for thing in reversed(stack):
            thing.stop()


async def _head_manifest(providers: Providers, slug: str) -> int:
    img = providers.images[slug]
    url = f"{providers.server.url}/v2/proxy/vendorapp/{slug}/{img.repo}/manifests/{img.tag}"
    async with aiohttp.ClientSession() as s:
        async with s.head(url, headers={"Authorization": basic(LICENSE), "Accept": img.media_type}) as r:
            return r.status


SLUGS = [p[0] for p in TOKEN_PROVIDERS] + ["ecr", "cdn", "rel"]


@pytest.mark.parametrize("slug", SLUGS)
def test_skopeo_pulls_through_each_provider(providers: Providers, slug: str):
    img = providers.images[slug]
    with tempfile.TemporaryDirectory() as out:
        res = skopeo.copy(providers.ref(slug), Path(out), creds=f"LICENSE_ID:{LICENSE}")
        assert res.returncode == 0, res.stderr
        providers.assert_clean(res.stdout + res.stderr, "skopeo output")
        assert (Path(out) / "manifest.json").read_bytes() == img.manifest
        for digest, size in img.blobs:
            assert (Path(out) / digest.split(":")[1]).stat().st_size == size


async def test_provider_challenge_shapes_were_followed(providers: Providers):
    # A pull through each token provider (its token may be cached already: then an
    # earlier fetch is on record), then each token server saw the proxy ask with its
    # own service name and a pull scope.
    for slug, *_rest in TOKEN_PROVIDERS:
        assert await _head_manifest(providers, slug) == 200, slug
    for slug, *_rest, user in TOKEN_PROVIDERS:
        ts = providers.token_servers[slug]
        proxy_fetches = [f for f in ts.fetches if f.scope and f.scope.endswith(":pull") and f.status == 200]
        assert proxy_fetches, f"{slug}: the proxy never fetched a token"
        assert all(f.user == user for f in proxy_fetches)


def test_docker_hub_one_part_names_are_library(providers: Providers):
    img = providers.images["hub"]
    # /proxy/<app>/redis:v1 -> Docker Hub library/redis, via the Docker Hub namespace fallback
    res = skopeo.inspect_raw(f"docker://{providers.server.host}/proxy/vendorapp/redis:v1", creds=f"x:{LICENSE}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.encode() == img.manifest
    res = skopeo.inspect_raw(
        f"docker://{providers.server.host}/proxy/vendorapp/docker.io/redis:v1", creds=f"x:{LICENSE}"
    )
    assert res.stdout.encode() == img.manifest


async def test_redirects_never_carry_credentials(providers: Providers):
    for slug in ("cdn", "rel"):
        img = providers.images[slug]
        for digest, size in img.blobs:
            url = f"{providers.server.url}/v2/proxy/vendorapp/{slug}/{img.repo}/blobs/{digest}"
            async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": basic(LICENSE)}) as r:
                assert r.status == 200, (slug, digest)
                assert len(await r.read()) == size
    assert providers.fronts["cdn"].redirected > 0 and providers.cdn.served > 0
    assert providers.cdn.with_credentials == 0
    assert providers.fronts["rel"].redirected > 0 and providers.fronts["rel"].storage_served > 0


async def test_ecr_token_is_signed_cached_and_refreshed(providers: Providers):
    api = providers.ecr_api
    img = providers.images["ecr"]
    url = f"{providers.server.url}/v2/proxy/vendorapp/ecr/{img.repo}/manifests/v1"
    headers = {"Authorization": basic(LICENSE), "Accept": img.media_type}
    if api.calls:  # a token an earlier test had fetched may still be cached: wait until it has run out
        await apoll(lambda: time.monotonic() > api.last_call + api.lifetime, 10, "the earlier ECR token expired")
    before = api.calls
    async with aiohttp.ClientSession() as s:

        async def head() -> int:
            async with s.head(url, headers=headers) as r:
                return r.status

        assert await asyncio.gather(*(head() for _ in range(25))) == [200] * 25
        assert api.calls == before + 1, "concurrent first requests share one GetAuthorizationToken"
        assert await asyncio.gather(*(head() for _ in range(25))) == [200] * 25
        assert api.calls == before + 1
        started = time.monotonic()

        async def fetched_again() -> bool:
            assert await head() == 200
            return api.calls > before + 1

        await apoll(fetched_again, 10, "an expired ECR token is fetched again")
        assert api.calls == before + 2
    assert time.monotonic() - started < 10
    assert api.problems == []


async def test_token_economy_one_fetch_for_a_thousand_pulls(providers: Providers):
    ts = providers.token_servers["quay"]
    img = providers.images["quay"]
    scope = f"repository:{img.repo}:pull"
    before = sum(1 for f in ts.fetches if f.scope == scope)
    url = f"{providers.server.url}/v2/proxy/vendorapp/quay/{img.repo}/manifests/v1"
    headers = {"Authorization": basic(LICENSE), "Accept": img.media_type}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as s:

        async def head() -> int:
            async with s.head(url, headers=headers) as r:
                return r.status

        for _ in range(10):
            assert await asyncio.gather(*(head() for _ in range(100))) == [200] * 100
    fetched = sum(1 for f in ts.fetches if f.scope == scope) - before
    assert fetched <= 1


async def test_wrong_vendor_credentials_are_a_502_naming_the_registry(providers: Providers, tmp_path: Path):
    ts = providers.token_servers["gh"]
    user = next(u for s, *_r, u in TOKEN_PROVIDERS if s == "gh")
    good = ts.users[user]
    ts.users[user] = "rotated-elsewhere"
    try:
        img = providers.images["gh-unpulled"]
        # A repository not yet authorised, so the proxy has to fetch a token.
        url = f"{providers.server.url}/v2/proxy/vendorapp/gh/{img.repo}/manifests/v1"
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"Authorization": basic(LICENSE), "Accept": img.media_type}) as r:
                body = await r.json()
                assert r.status == 502
        message = body["errors"][0]["message"]
        assert "'gh'" in message and "refused the proxy's credentials" in message
        providers.assert_clean(json.dumps(body), "a 502 body")
    finally:
        ts.users[user] = good


async def test_docker_hub_rate_limit_reaches_client_and_metrics(providers: Providers):
    img = providers.images["hub-limited"]
    url = f"{providers.server.url}/v2/proxy/vendorapp/hub-limited/{img.repo}/manifests/v1"
    headers = {"Authorization": basic(LICENSE), "Accept": img.media_type}
    seen = []
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.head(url, headers=headers) as r:
                assert r.status == 200
                seen.append(r.headers["RateLimit-Remaining"])
        assert seen == ["2;w=21600", "1;w=21600", "0;w=21600"]
        async with s.get(url, headers=headers) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "7"
            assert (await r.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
        async with s.get(providers.server.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'pullgate_upstream_ratelimit_remaining{registry="hub-limited"} 0.0' in text


async def test_ghcr_denied_without_a_challenge_is_the_vendors_credentials(providers: Providers):
    url = f"{providers.server.url}/v2/proxy/vendorapp/gh-denied/vendor-bot/app/manifests/v1"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Authorization": basic(LICENSE)}) as r:
            status, body = r.status, await r.json()
    assert status == 502
    message = body["errors"][0]["message"]
    assert "'gh-denied'" in message and "refused the proxy's credentials" in message
    providers.assert_clean(json.dumps(body), "a 502 body")
