"""skopeo pulls through the proxy exactly as it pulls directly from the upstream."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support import skopeo
from tests.support.deployment import Deployment

CASES = [
    ("vendor-basic", "oci", False),
    ("vendor-basic", "index", True),
    ("vendor-token", "docker", False),
    ("vendor-token", "dockerlist", True),
    ("vendor-anon", "oci", False),
    ("vendor-token", "big", False),
]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "version"}


@pytest.mark.parametrize(("slug", "image", "all_"), CASES, ids=[f"{s}-{i}" for s, i, _ in CASES])
def test_skopeo_copy_matches_direct_pull(deployment: Deployment, workdir: Path, slug: str, image: str, all_: bool):
    upstream = deployment.upstreams[slug]
    img = upstream.images[image]
    proxied = workdir / "proxied"
    direct = workdir / "direct"
    ref = f"docker://{deployment.host}/proxy/acme/{slug}/{img.repo}:{img.tag}"
    res = skopeo.copy(ref, proxied, creds=f"LICENSE_ID:{deployment.licenses['valid']}", all=all_)
    assert res.returncode == 0, res.stderr
    deployment.assert_clean(res.stdout + res.stderr, "skopeo output")
    res = skopeo.copy(upstream.ref(img.repo, img.tag), direct, creds=upstream.creds, all=all_)
    assert res.returncode == 0, res.stderr
    got, want = _files(proxied), _files(direct)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], f"{name} differs from the direct pull"
    assert got["manifest.json"] == img.manifest
    assert "sha256:" + hashlib.sha256(got["manifest.json"]).hexdigest() == img.digest


def test_skopeo_inspect_raw_by_tag_and_digest(deployment: Deployment):
    img = deployment.upstreams["vendor-basic"].images["index"]
    creds = f"LICENSE_ID:{deployment.licenses['valid']}"
    base = f"docker://{deployment.host}/proxy/acme/vendor-basic/{img.repo}"
    for ref in (f"{base}:{img.tag}", f"{base}@{img.digest}"):
        res = skopeo.inspect_raw(ref, creds=creds)
        assert res.returncode == 0, res.stderr
        assert res.stdout.encode() == img.manifest


def test_endpoint_host_resolves_like_the_slug(deployment: Deployment):
    img = deployment.upstreams["vendor-anon"].images["docker"]
    res = skopeo.inspect_raw(
        f"docker://{deployment.host}/proxy/acme/registry.anon.test/{img.repo}:{img.tag}",
        creds=f"LICENSE_ID:{deployment.licenses['valid']}",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.encode() == img.manifest
