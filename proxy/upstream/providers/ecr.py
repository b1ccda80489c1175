"""Amazon ECR: the stored access key buys a 12-hour registry password.

`GetAuthorizationToken` is a SigV4-signed POST to the regional ECR API
(signed by botocore's signer; an optional IAM role is assumed through STS
first), both flows (proxy.upstream.flow) that the client sends. Its
`authorizationToken` is base64("AWS:<password>"), sent to the registry as
Basic. The token is kept until one hour before `expiresAt`, fetched once for
all waiters, and fetched early when the registry answers 401.
Blob downloads redirect to S3 presigned URLs; the shared redirect code sends
them no Authorization header (S3 refuses two auth mechanisms at once).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from defusedxml import ElementTree

from proxy import metrics
from proxy.secrets import Keyring
from proxy.store.models import Registry
from proxy.upstream.errors import CredentialsRejected, UpstreamError
from proxy.upstream.flow import MAX_ANSWER, Clock, Flow, Request, Response
from proxy.upstream.providers.base import SECRET, CredentialContext, Field, Provider, RegistryCredentials
from proxy.upstream.tokens import CachedToken

# The region names the host the signed API calls go to (api.ecr.<region>.amazonaws.com).
REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
ENDPOINT_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
REFRESH_MARGIN = 3600.0  # use a token until an hour before it expires
MIN_LIFETIME = 60.0  # kept this long when our clock says it is already expired
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


def _region_problem(region: str, values: Mapping[str, Any]) -> str | None:
    # It names the host the signed API calls go to: "evil.example/#" would send them elsewhere.
    return None if REGION_RE.match(region) else "must be an AWS region such as us-east-1"


def _role_problem(role: str, values: Mapping[str, Any]) -> str | None:
    return None if role.startswith("arn:aws") else "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)"


# Shown on the edit form: where the key is sent, so changing it needs the key again.
_AGAIN = ("rotate",)
FIELDS = (
    Field(
        api="accessKeyId",
        config="access_key_id",
        stored="access_key_id",
        help="AWS access key id",
        label="Access key ID",
        flags=("--accesskeyid",),
        required=True,
        aliases=("username",),
        max_length=128,
    ),
    Field(
        api="secretAccessKey",
        config="secret_access_key",
        stored=SECRET,
        help="AWS secret access key",
        label="Secret access key",
        flags=("--secretaccesskey",),
        secret=True,
        required=True,
        aliases=("password",),
        max_length=1024,
    ),
    Field(
        api="region",
        config="region",
        stored="region",
        help="AWS region (default: from the endpoint)",
        label="Region",
        flags=("--region",),
        destination=True,
        max_length=2048,
        check=_region_problem,
        placeholder="from the endpoint",
    ),
    Field(
        api="roleArn",
        config="role_arn",
        stored="role_arn",
        help="IAM role to assume with STS",
        label="Role ARN",
        flags=("--role-arn",),
        destination=True,
        max_length=2048,
        check=_role_problem,
        placeholder="arn:aws:iam::123456789012:role/pull",
        hint="Optional: assumed with STS.",
    ),
    Field(
        api="apiUrl",
        config="api_url",
        stored="api_url",
        help="the ECR API endpoint (VPC endpoints, tests)",
        label="ECR API URL",
        flags=("--api-url",),
        destination=True,
        url=True,
        max_length=2048,
        forms=_AGAIN,
        placeholder="https://api.ecr.<region>.amazonaws.com",
    ),
    Field(
        api="stsUrl",
        config="sts_url",
        stored="sts_url",
        help="the STS endpoint for role_arn",
        destination=True,
        url=True,
        max_length=2048,
        forms=(),
        in_api=False,
    ),
)


class ECR(Provider):
    name = "ecr"
    title = "ECR"
    fields = FIELDS
    endpoint_placeholder = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    url_forms = ()

    def endpoint_problem(self, endpoint: str, options: Mapping[str, Any]) -> str | None:
        if ENDPOINT_RE.match(endpoint) or options.get("region"):
            return None
        return "ECR is <account>.dkr.ecr.<region>.amazonaws.com (or give region)"

    async def credentials(self, ctx: CredentialContext, registry: Registry, refresh: bool) -> RegistryCredentials:
        key = (registry.id, ECR_KEY)
        current = ctx.tokens.peek(key)
        stale = current.header if (refresh and current is not None) else None

        async def fetch() -> CachedToken:
            flow = token_flow(registry, ctx.keyring, ctx.clock)
            metrics.UPSTREAM_TOKEN_FETCHES.labels(registry.slug, "ecr").inc()
            return await ctx.run(flow, registry.slug)

        tok = await ctx.tokens.get(key, fetch, stale)
        try:
            user, _, password = base64.b64decode(tok.header, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise UpstreamError(registry.slug, "ECR returned an unreadable authorization token") from None
        return RegistryCredentials(username=user, password=password, expires_at=tok.expires_at)


def token_flow(registry: Registry, keyring: Keyring, clock: Clock) -> Flow[CachedToken]:
    """The stored access key (through STS AssumeRole when a role is set) buys a registry password."""
    region = region_of(registry)
    if not region:
        raise UpstreamError(registry.slug, "no AWS region: set region or use the ECR endpoint host")
    secret = keyring.open(registry.secret_sealed, registry.id) if registry.secret_sealed else ""
    creds = Credentials(registry.options.get("access_key_id", ""), secret)
    if registry.options.get("role_arn"):
        sts_url = registry.options.get("sts_url") or f"https://sts.{region}.amazonaws.com/"
        session_name = f"pullgate-{registry.slug}"[:64]
        creds = yield from assume_role_flow(
            registry.slug, sts_url, region, creds, registry.options["role_arn"], session_name
        )
    api_url = registry.options.get("api_url") or f"https://api.ecr.{region}.amazonaws.com/"
    return (yield from authorization_token_flow(registry.slug, api_url, region, creds, clock))


def authorization_token_flow(slug: str, url: str, region: str, creds: Credentials, clock: Clock) -> Flow[CachedToken]:
    """ECR GetAuthorizationToken: the header kept is ECR's base64("AWS:<password>")."""
    body = b"{}"
    headers = signed_headers(
        url, body, {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET}, "ecr", region, creds
    )
    started = clock.monotonic()
    response = yield Request("POST", url, headers, body, purpose="ECR GetAuthorizationToken")
    data = _answer(slug, response, "ECR GetAuthorizationToken")
    try:
        item = json.loads(data)["authorizationData"][0]
        token = item["authorizationToken"]
        keep = lifetime(item.get("expiresAt"), clock.wall())
    except (ValueError, KeyError, IndexError, TypeError):
        raise UpstreamError(slug, "ECR GetAuthorizationToken answer is malformed") from None
    if not isinstance(token, str) or not token:
        raise UpstreamError(slug, "ECR GetAuthorizationToken answer has no token")
    return CachedToken(header=token, expires_at=started + keep)


def assume_role_flow(
    slug: str, url: str, region: str, creds: Credentials, role_arn: str, session_name: str
) -> Flow[Credentials]:
    """STS AssumeRole: the access key's short-lived credentials for the role."""
    form = urlencode(
        {
            "Action": "AssumeRole",
            "Version": "2011-06-15",
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": "3600",
        }
    ).encode()
    headers = signed_headers(url, form, {"Content-Type": "application/x-www-form-urlencoded"}, "sts", region, creds)
    response = yield Request("POST", url, headers, form, purpose="STS AssumeRole")
    data = _answer(slug, response, "STS AssumeRole")
    try:
        root = ElementTree.fromstring(data)
        found = {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in root.iter()}
        return Credentials(found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"])
    except (ElementTree.ParseError, KeyError):
        raise UpstreamError(slug, "STS AssumeRole answer is malformed") from None


def _answer(slug: str, response: Response, what: str) -> bytes:
    if response.status in (400, 401, 403):
        # AWS answers bad keys with 400 UnrecognizedClient / 403 InvalidSignature.
        raise CredentialsRejected(slug, response.status)
    if response.status != 200:
        raise UpstreamError(slug, f"{what} answered {response.status}")
    if len(response.body) > MAX_ANSWER:
        raise UpstreamError(slug, f"{what} answer is too large")
    return response.body
