"""The registry test: can the stored credentials reach a manifest of this image?

Runs the registry's own auth and a manifest HEAD, as a pull would, and reports
the upstream's status with a short reason a vendor can act on. The vendor API
(`PUT /vendor/v3/external_registry/test`) and `pullgate registry test` use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.oci.errors import OCIError, PullgateCode
from proxy.oci.grammar import MANIFEST_TYPES, TAG_RE, check_digest, check_name
from proxy.store.models import Registry
from proxy.upstream.client import UpstreamClient
from proxy.upstream.errors import CredentialsRejected, EgressRefused, UpstreamError, UpstreamTimeout
from proxy.upstream.providers import provider_of

MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)


@dataclass(frozen=True)
class ProbeResult:
    status: int  # the upstream's HTTP status; 0 when no answer came
    ok: bool
    reason: str


def split_image(image: str) -> tuple[str, str]:
    """`repo[:tag|@digest]` -> (repo, reference); the tag defaults to latest.

    ValueError("<OCI code>: <message>") when the image is not well formed: a
    result for the vendor who asked, not an error answered to a client."""
    try:
        if "@" in image:
            repo, ref = image.split("@", 1)
            check_digest(ref)
        else:
            repo, sep, ref = image.rpartition(":")
            if not sep or "/" in ref:
                repo, ref = image, "latest"
            elif not TAG_RE.match(ref):
                raise ValueError(f"{PullgateCode.TAG_INVALID.value}: invalid tag")
        check_name(repo)
    except OCIError as exc:
        raise ValueError(f"{exc.code.value}: {exc.message}") from None
    return repo, ref


async def probe(client: UpstreamClient, registry: Registry, image: str) -> ProbeResult:
    try:
        repo, ref = split_image(image)
    except ValueError as exc:
        return ProbeResult(0, False, str(exc))
    repo = provider_of(registry).upstream_repo(repo)
    try:
        async with client.request(
            registry, "HEAD", f"/v2/{repo}/manifests/{ref}", {"Accept": MANIFEST_ACCEPT}, f"repository:{repo}:pull"
        ) as resp:
            status = resp.status
    except CredentialsRejected as exc:
        return ProbeResult(exc.upstream_status, False, "the registry refused the stored credentials")
    except UpstreamTimeout:
        return ProbeResult(0, False, "the registry did not answer in time")
    except EgressRefused:
        raise  # a refusal, not a result: the caller says which rule (and no timing or status leaks)
    except UpstreamError as exc:
        return ProbeResult(0, False, exc.message)
    if status == 200:
        return ProbeResult(200, True, "ok")
    if status == 404:
        return ProbeResult(404, False, f"MANIFEST_UNKNOWN: no {repo}:{ref} there (check the image name and tag)")
    if status in (401, 403):
        return ProbeResult(status, False, "the registry refused the stored credentials")
    if status == 429:
        return ProbeResult(429, False, "the registry is rate limiting these credentials")
    return ProbeResult(status, False, f"the registry answered {status}")
