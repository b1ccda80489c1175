"""The test infrastructure proven against the upstream registries directly (no proxy)."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support import skopeo
from tests.support.images import OCI_MANIFEST, PushedImage, Pusher, PushError, oci_image
from tests.support.registry import Registry
from tests.support.token_server import TokenServer

UPSTREAMS = ["upstream_anon", "upstream_basic", "upstream_token"]
SMALL = ["oci", "index", "docker", "dockerlist"]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _assert_dir_copy(dest: Path, img: PushedImage, copied_all: bool) -> None:
    """skopeo's dir: layout holds our exact manifest bytes and blobs named by their digest."""
    assert (dest / "manifest.json").read_bytes() == img.manifest
    images = [img]
    if img.children:
        assert copied_all
        for c in img.children:
            assert (dest / f"{c.digest.removeprefix('sha256:')}.manifest.json").read_bytes() == (c.manifest)
        images = img.children
    for i in images:
        for digest, size in i.blobs:
            blob = dest / digest.removeprefix("sha256:")
            assert blob.stat().st_size == size
            assert _file_digest(blob) == digest


def _http(
    url: str, auth: str | None = None, data: bytes | None = None, accept: str = OCI_MANIFEST
) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:")
    headers = {"Accept": accept} | ({"Authorization": auth} if auth else {})
    req = urllib.request.Request(url, data, headers)  # noqa: S310 - loopback http only
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url: str, auth: str | None = None) -> int:
    return _http(url, auth)[0]


def _basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_skopeo_copies_seeded_image(upstream: str, name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    reg: Registry = request.getfixturevalue(upstream)
    img = reg.images[name]
    copied_all = bool(img.children)
    p = skopeo.copy(reg.ref(img.repo, img.tag or img.digest), tmp_path, reg.creds, all=copied_all)
    assert p.returncode == 0, p.stderr
    _assert_dir_copy(tmp_path, img, copied_all)

    raw = skopeo.inspect_raw(reg.ref(img.repo, img.digest), reg.creds)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.encode() == img.manifest


def test_index_without_all_picks_amd64(upstream_anon: Registry, tmp_path: Path) -> None:
    img = upstream_anon.images["index"]
    arch = ["--override-os", "linux", "--override-arch", "amd64"]
    p = skopeo.copy(upstream_anon.ref(img.repo, "v1"), tmp_path, extra_args=arch)
    assert p.returncode == 0, p.stderr
    _assert_dir_copy(tmp_path, img.child("linux/amd64"), False)


def test_big_layer_copy_through_token_auth(upstream_token: Registry, big_layer_mib: int, tmp_path: Path) -> None:
    img = upstream_token.images["big"]
    assert max(size for _, size in img.blobs) >= big_layer_mib << 20
    p = skopeo.copy(upstream_token.ref(img.repo, "v1"), tmp_path, upstream_token.creds)
    assert p.returncode == 0, p.stderr
    _assert_dir_copy(tmp_path, img, False)


def test_tags_listed(upstream_basic: Registry) -> None:
    p = skopeo.list_tags(f"docker://{upstream_basic.host}/vendor/oci", upstream_basic.creds)
    assert p.returncode == 0, p.stderr
    # 2.8 lists tags unsorted and ignores n/last on tags/list.
    assert sorted(json.loads(p.stdout)["Tags"]) == ["v1", "v2", "v3", "v4", "v5"]


def test_token_server_counts_fetches(upstream_token: Registry) -> None:
    ts = upstream_token.token_server
    assert ts is not None
    before, before_auth = ts.fetch_count, ts.authorized_count
    img = upstream_token.images["docker"]
    p = skopeo.inspect_raw(upstream_token.ref(img.repo, "v1"), upstream_token.creds)
    assert p.returncode == 0, p.stderr
    new = ts.fetches[before:]
    assert len(new) == ts.fetch_count - before >= 1
    assert ("repository:vendor/docker:pull", "vendor") in [(f.scope, f.user) for f in new]
    assert all(f.status == 200 for f in new)
    assert ts.authorized_count > before_auth  # skopeo sent Basic to the realm
    assert ts.authorized_requests[-1][2] == _basic("vendor", upstream_token.password or "")


@pytest.mark.parametrize("upstream", ["upstream_basic", "upstream_token"])
def test_wrong_or_no_creds_refused(upstream: str, request: pytest.FixtureRequest) -> None:
    reg: Registry = request.getfixturevalue(upstream)
    ref = reg.ref("vendor/oci", "v1")
    for creds in ["vendor:wrong-password", "nobody:" + (reg.password or ""), None]:
        p = skopeo.inspect_raw(ref, creds)
        assert p.returncode != 0, creds
        assert "unauthorized" in p.stderr.lower() or "401" in p.stderr, p.stderr
    assert _get(reg.url + "/v2/", _basic("vendor", "wrong-password")) == 401
    assert _get(reg.url + "/v2/vendor/oci/manifests/v1") == 401
    if reg.token_server is not None:
        realm = reg.token_server.realm + "?service=" + reg.token_server.service
        assert _get(realm, _basic("vendor", "wrong-password")) == 401
        assert _get(realm) == 401
        assert reg.token_server.fetches[-1].status == 401


def test_anon_needs_no_creds_but_accept(upstream_anon: Registry) -> None:
    assert upstream_anon.creds is None
    url = upstream_anon.url + "/v2/vendor/oci/manifests/v1"
    assert _http(url)[1] == upstream_anon.images["oci"].manifest
    # 2.8 hides an OCI manifest from a client that does not Accept it: the proxy must
    # pass Accept upstream. (Without Accept, a schema2 manifest is 400 MANIFEST_INVALID:
    # 2.8 tries to down-convert it to schema1.)
    assert _http(url, accept="*/*")[0] == 404


@pytest.mark.parametrize("header_mode", ["x5c", "kid"])
def test_token_header_modes_and_grants(header_mode: str, tmp_path: Path) -> None:
    """2.8 accepts either an x5c chain or a bare libtrust `kid`; grants limit actions."""
    with (
        TokenServer(
            {"vendor": "pw", "reader": "pw2"},
            header_mode=header_mode,  # type: ignore[arg-type]
            grants={"vendor": {"*"}, "reader": {"pull"}},
            cert_path=tmp_path / "cert.pem",
        ) as ts,
        Registry("token", token_server=ts) as reg,
    ):
        img = oci_image(Pusher(reg.url, "vendor", "pw"), "t/img", "v1", [b"layer"])
        assert ts.issued_count == 1
        p = skopeo.inspect_raw(reg.ref("t/img", "v1"), "reader:pw2")
        assert p.returncode == 0, p.stderr
        assert p.stdout.encode() == img.manifest
        with pytest.raises(PushError, match="401"):
            oci_image(Pusher(reg.url, "reader", "pw2"), "t/img", "v2", [b"other"])


def test_token_post_password_grant(upstream_token: Registry) -> None:
    ts = upstream_token.token_server
    assert ts is not None
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": "vendor",
            "password": upstream_token.password,
            "service": ts.service,
            "scope": "repository:vendor/oci:pull",
            "client_id": "test",
        }
    ).encode()
    status, raw = _http(ts.realm, data=form)
    assert status == 200
    body = json.loads(raw)
    assert body["expires_in"] == 300 and body["token"] == body["access_token"]
    url = upstream_token.url + "/v2/vendor/oci/manifests/v1"
    assert _get(url, "Bearer " + body["access_token"]) == 200
    other = upstream_token.url + "/v2/vendor/big/manifests/v1"
    assert _get(other, "Bearer " + body["token"]) == 401  # the token is for vendor/oci only
