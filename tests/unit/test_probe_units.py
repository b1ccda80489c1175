"""proxy.upstream.probe: a malformed image is a result for the vendor, not a client-facing OCI error."""

from __future__ import annotations

from typing import cast

import pytest

from proxy.store.models import Registry
from proxy.upstream.client import UpstreamClient
from proxy.upstream.probe import probe, split_image


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("vendor/app", ("vendor/app", "latest")),
        ("vendor/app:1.0", ("vendor/app", "1.0")),
        ("vendor/sub/app:v2", ("vendor/sub/app", "v2")),
        ("vendor/app@sha256:" + "a" * 64, ("vendor/app", "sha256:" + "a" * 64)),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


@pytest.mark.parametrize(
    ("image", "code"),
    [
        ("vendor/app:-bad", "TAG_INVALID"),
        ("Vendor/App:1", "NAME_INVALID"),
        ("vendor/app@sha256:short", "DIGEST_INVALID"),
    ],
)
def test_a_malformed_image_is_a_value_error_naming_the_oci_code(image: str, code: str) -> None:
    with pytest.raises(ValueError, match=f"^{code}: "):
        split_image(image)


class NoClient:
    """A probe of a malformed image must not reach the registry."""

    async def request(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("no upstream request for a malformed image")


async def test_probe_reports_a_malformed_image_without_upstream_io() -> None:
    registry = Registry(
        id="r",
        team_id="t",
        slug="s",
        provider="other",
        endpoint="registry.example",
        url="https://registry.example",
        insecure=False,
        username=None,
        secret_sealed=None,
    )
    result = await probe(cast(UpstreamClient, NoClient()), registry, "vendor/app:-bad")
    assert (result.status, result.ok) == (0, False)
    assert result.reason.startswith("TAG_INVALID: ")
