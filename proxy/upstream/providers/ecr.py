"""Amazon ECR: the stored access key buys a 12-hour registry password.

`GetAuthorizationToken` is a SigV4-signed POST to the regional ECR API
(signed by botocore's signer; an optional IAM role is assumed through STS
first). Its `authorizationToken` is base64("AWS:<password>"), sent to the
registry as Basic. The token is kept until one hour before `expiresAt`,
fetched once for all waiters, and fetched early when the registry answers 401.
Blob downloads redirect to S3 presigned URLs; the shared redirect code sends
them no Authorization header (S3 refuses two auth mechanisms at once).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import re
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from defusedxml import ElementTree

from proxy import metrics
from proxy.store.models import Registry
from proxy.upstream.connector import EgressDenied, record_refusal
from proxy.upstream.errors import CredentialsRejected, EgressRefused, UpstreamError, UpstreamTimeout
from proxy.upstream.providers.base import CredentialContext, Provider, RegistryCredentials
from proxy.upstream.tokens import CachedToken

# The region names the host the signed API calls go to (api.ecr.<region>.amazonaws.com).
REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
ENDPOINT_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
REFRESH_MARGIN = 3600.0  # use a token until an hour before it expires
MIN_LIFETIME = 60.0  # kept this long when our clock says it is already expired
MAX_ANSWER = 1024 * 1024
ECR_KEY = "*ecr*"


def region_of(registry: Registry) -> str | None:
    if registry.options.get("region"):
        return registry.options["region"]
    m = ENDPOINT_RE.match(registry.endpoint.lower())
    return m["region"] if m else None


def lifetime(expires_at: Any, now: float) -> float:
    """Seconds to keep a token whose `expiresAt` (epoch seconds or ISO text) is given."""
    try:
        if isinstance(expires_at, int | float):
            expiry = float(expires_at)
        else:
            expiry = dt.datetime.fromisoformat(str(expires_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return MIN_LIFETIME
    remaining = expiry - now
    if remaining > REFRESH_MARGIN:
        return remaining - REFRESH_MARGIN
    if remaining > 0:
        return remaining / 2  # a short-lived token: use the first half of its life
    return MIN_LIFETIME  # "already expired" by our clock: a skewed clock, not a dead token


def signed_headers(
    url: str, body: bytes, headers: dict[str, str], service: str, region: str, creds: Credentials
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(creds, service, region).add_auth(request)
    return dict(request.headers.items())


class ECR(Provider):
    name = "ecr"

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        problems = []
        if not ENDPOINT_RE.match(endpoint.lower()) and not options.get("region"):
            problems.append("endpoint: ECR is <account>.dkr.ecr.<region>.amazonaws.com (or give region)")
        region = options.get("region")
        if region and not REGION_RE.match(str(region)):
            problems.append("region: must be an AWS region such as us-east-1")
        if not options.get("access_key_id"):
            problems.append("access_key_id: required")
        if not secret:
            problems.append("secret_access_key: required")
        role = options.get("role_arn")
        if role and not str(role).startswith("arn:aws"):
            problems.append("role_arn: must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        return problems

    async def credentials(self, ctx: CredentialContext, registry: Registry, refresh: bool) -> RegistryCredentials:
        key = (registry.id, ECR_KEY)
        current = ctx.tokens.peek(key)
        stale = current.header if (refresh and current is not None) else None

        async def fetch() -> CachedToken:
            return await self._fetch(ctx, registry)

        tok = await ctx.tokens.get(key, fetch, stale)
        try:
            user, _, password = base64.b64decode(tok.header, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise UpstreamError(registry.slug, "ECR returned an unreadable authorization token") from None
        return RegistryCredentials(username=user, password=password, expires_at=tok.expires_at)

    async def _fetch(self, ctx: CredentialContext, registry: Registry) -> CachedToken:
        region = region_of(registry)
        if not region:
            raise UpstreamError(registry.slug, "no AWS region: set region or use the ECR endpoint host")
        access_key = registry.options.get("access_key_id", "")
        secret = ctx.keyring.open(registry.secret_sealed, registry.id) if registry.secret_sealed else ""
        creds = Credentials(access_key, secret)
        if registry.options.get("role_arn"):
            creds = await self._assume_role(ctx, registry, region, creds)
        url = registry.options.get("api_url") or f"https://api.ecr.{region}.amazonaws.com/"
        body = b"{}"
        headers = signed_headers(
            url, body, {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET}, "ecr", region, creds
        )
        started = time.monotonic()
        metrics.UPSTREAM_TOKEN_FETCHES.labels(registry.slug, "ecr").inc()
        data = await _post(ctx, registry, url, body, headers, "ECR GetAuthorizationToken")
        try:
            item = json.loads(data)["authorizationData"][0]
            token = item["authorizationToken"]
            keep = lifetime(item.get("expiresAt"), time.time())
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError(registry.slug, "ECR GetAuthorizationToken answer is malformed") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError(registry.slug, "ECR GetAuthorizationToken answer has no token")
        return CachedToken(header=token, expires_at=started + keep)

    async def _assume_role(
        self, ctx: CredentialContext, registry: Registry, region: str, creds: Credentials
    ) -> Credentials:
        url = registry.options.get("sts_url") or f"https://sts.{region}.amazonaws.com/"
        form = urlencode(
            {
                "Action": "AssumeRole",
                "Version": "2011-06-15",
                "RoleArn": registry.options["role_arn"],
                "RoleSessionName": f"pullgate-{registry.slug}"[:64],
                "DurationSeconds": "3600",
            }
        ).encode()
        headers = signed_headers(url, form, {"Content-Type": "application/x-www-form-urlencoded"}, "sts", region, creds)
        data = await _post(ctx, registry, url, form, headers, "STS AssumeRole")
        try:
            root = ElementTree.fromstring(data)
            found = {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in root.iter()}
            return Credentials(found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"])
        except (ElementTree.ParseError, KeyError):
            raise UpstreamError(registry.slug, "STS AssumeRole answer is malformed") from None


async def _post(
    ctx: CredentialContext, registry: Registry, url: str, body: bytes, headers: dict[str, str], what: str
) -> bytes:
    try:
        async with asyncio.timeout(ctx.timeout):
            async with ctx.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                data = await resp.content.read(MAX_ANSWER)
                status = resp.status
    except TimeoutError:
        raise UpstreamTimeout(registry.slug, f"{what} timed out") from None
    except EgressDenied as exc:
        record_refusal(registry.slug, exc, f"the {what} endpoint")
        raise EgressRefused(registry.slug, exc.refusal) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(registry.slug, f"{what} unreachable ({type(exc).__name__})") from None
    if status in (400, 401, 403):
        # AWS answers bad keys with 400 UnrecognizedClient / 403 InvalidSignature.
        raise CredentialsRejected(registry.slug, status)
    if status != 200:
        raise UpstreamError(registry.slug, f"{what} answered {status}")
    return data
