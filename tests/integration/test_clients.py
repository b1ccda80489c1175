"""Real registry clients pull through the proxy: containerd (as Kubernetes nodes pull),
crane and regctl. Each result is checked against the bytes seeded upstream.

CI must run these: a client that cannot be had fails there (CI=true) and is
skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support import containerd as ctrd
from tests.support import gotools
from tests.support.ci import unavailable
from tests.support.deployment import Deployment
from tests.support.images import PushedImage, image, rootfs_layer

WRONG = "lic-wrong-0123456789abcdef01234567"  # looks like a license, belongs to nobody


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _proxied(deployment: Deployment, slug: str, repo: str) -> str:
    return f"{deployment.host}/proxy/acme/{slug}/{repo}"


class AccessLog:
    """The proxy's access lines written after this point (JSON lines)."""

    def __init__(self, deployment: Deployment) -> None:
        self.server = deployment.server
        self.mark = len(self.server.log_text().splitlines())

    def lines(self) -> list[dict]:
        out = []
        for line in self.server.log_text().splitlines()[self.mark :]:
            entry = json.loads(line)
            if entry.get("msg") == "access":
                out.append(entry)
        return out

    def wait(self, predicate: Callable[[list[dict]], bool], timeout: float = 5) -> list[dict]:
        # An access line is written once its response is sent: it may trail the client a little.
        self.server.wait_until(lambda: predicate(self.lines()), timeout=timeout)
        return self.lines()

    def refused(self) -> int:
        return sum(e["status"] in (401, 403) for e in self.lines())


# -- containerd ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rootfs_image(deployment: Deployment) -> PushedImage:
    """One unpackable linux/amd64 image, pushed to the Basic-auth upstream for this module."""
    return image(deployment.upstreams["vendor-basic"], "vendor/ctr-rootfs", "v1", [rootfs_layer()])


@pytest.fixture
def containerd() -> Iterator[ctrd.Containerd]:
    reason = ctrd.available()
    if reason:
        unavailable(reason)
    daemon = ctrd.Containerd().start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _ctr_ok(res: subprocess.CompletedProcess[str], deployment: Deployment) -> str:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    deployment.assert_clean(res.stdout + res.stderr, "ctr output")
    return res.stdout


def _images(daemon: ctrd.Containerd, deployment: Deployment) -> dict[str, list[str]]:
    """`ctr images ls`: ref -> [type, digest, size, unit, platforms, labels]."""
    out = _ctr_ok(daemon.ctr(["images", "ls"]), deployment)
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return {row[0]: row[1:] for row in rows}


def _token_forms(log: AccessLog) -> set[str]:
    return {e["method"] for e in log.lines() if e["route"] == "token"}


def test_containerd_pulls_and_unpacks(containerd: ctrd.Containerd, deployment: Deployment, rootfs_image: PushedImage):
    img = rootfs_image
    ref = f"{_proxied(deployment, 'vendor-basic', img.repo)}:{img.tag}"
    log = AccessLog(deployment)
    res = containerd.ctr(
        [
            "images",
            "pull",
            "--plain-http",
            "--platform",
            "linux/amd64",
            "--user",
            f"LICENSE_ID:{deployment.licenses['valid']}",
            ref,
        ]
    )
    _ctr_ok(res, deployment)
    listed = _images(containerd, deployment)
    assert listed[ref][1] == img.digest, listed
    check = _ctr_ok(containerd.ctr(["images", "check"]), deployment)
    row = next(line for line in check.splitlines() if line.startswith(ref + " "))
    assert "complete" in row and row.split()[-1] == "true", check  # fetched and unpacked
    # Unpacking checked the layer against the config's diff_id; the stored bytes are ours too.
    layer = img.layers[0]
    got = containerd.ctr_bytes(["content", "get", layer.digest])
    assert _sha256(got) == layer.digest == _sha256(b"".join(layer.source()))
    entries = log.wait(lambda lines: any(e["route"] == "token" for e in lines))
    # containerd asks for its token with the OAuth2 POST form, and the proxy answers it.
    assert _token_forms(log) == {"POST"}, [e for e in entries if e["route"] == "token"]
    assert all(e["status"] == 200 for e in entries if e["route"] == "token"), entries
    deployment.assert_clean(containerd.log_text(), "containerd's log")


@pytest.mark.parametrize(("slug", "name"), [("vendor-basic", "index"), ("vendor-token", "dockerlist")])
def test_containerd_fetches_every_platform(containerd: ctrd.Containerd, deployment: Deployment, slug: str, name: str):
    # The seeded layers are not tar archives: fetch everything, without unpacking.
    img = deployment.upstreams[slug].images[name]
    ref = f"{_proxied(deployment, slug, img.repo)}:{img.tag}"
    res = containerd.ctr(
        [
            "content",
            "fetch",
            "--plain-http",
            "--all-platforms",
            "--user",
            f"LICENSE_ID:{deployment.licenses['valid']}",
            ref,
        ]
    )
    _ctr_ok(res, deployment)
    listed = _images(containerd, deployment)
    assert listed[ref][1] == img.digest, listed
    assert listed[ref][4] == "linux/amd64,linux/arm64", listed
    check = _ctr_ok(containerd.ctr(["images", "check"]), deployment)
    assert "complete" in next(line for line in check.splitlines() if line.startswith(ref + " ")), check
    content = _ctr_ok(containerd.ctr(["content", "ls", "-q"]), deployment).split()
    assert set(content) == {img.digest, *(c.digest for c in img.children), *(d for d, _ in img.all_blobs())}
    assert containerd.ctr_bytes(["content", "get", img.digest]) == img.manifest


def test_containerd_wrong_license_fails(containerd: ctrd.Containerd, deployment: Deployment):
    img = deployment.upstreams["vendor-basic"].images["index"]
    ref = f"{_proxied(deployment, 'vendor-basic', img.repo)}:{img.tag}"
    log = AccessLog(deployment)
    res = containerd.ctr(
        ["images", "pull", "--plain-http", "--platform", "linux/amd64", "--user", f"LICENSE_ID:{WRONG}", ref]
    )
    assert res.returncode != 0, res.stdout
    assert re.search(r"401|unauthorized", res.stderr, re.I), res.stderr
    assert not _ctr_ok(containerd.ctr(["images", "ls", "-q"]), deployment).strip()
    assert not _ctr_ok(containerd.ctr(["content", "ls", "-q"]), deployment).strip()
    log.wait(lambda lines: any(e["status"] == 401 for e in lines))
    assert 1 <= log.refused() <= 3, log.lines()  # every refusal counts against the address's budget


# -- crane and regctl ------------------------------------------------------------------------


def _go_tool(tool: gotools.GoTool) -> Path:
    try:
        return gotools.build(tool)
    except gotools.GoToolBuildError as exc:
        unavailable(f"{tool.name} unavailable: {exc}")
        raise


class Crane:
    """crane with a private HOME and DOCKER_CONFIG holding the license for the proxy."""

    def __init__(self, binary: Path, home: Path, host: str, license_id: str) -> None:
        self.binary = binary
        docker = home / ".docker"
        docker.mkdir(parents=True)
        auth = base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()
        (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "DOCKER_CONFIG": str(docker),
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        }

    def run(self, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.binary), "--insecure", *args], capture_output=True, timeout=timeout, env=self.env
        )


class Regctl:
    """regctl with its config under a private HOME: plain HTTP and the license for the proxy."""

    def __init__(self, binary: Path, home: Path, host: str, license_id: str) -> None:
        self.binary = binary
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        }
        self.host = host
        res = self.run(["registry", "set", "--skip-check", "--tls", "disabled", host])
        assert res.returncode == 0, res.stderr
        self.login = self.run(
            ["registry", "login", "-u", "LICENSE_ID", "--pass-stdin", host], stdin=license_id.encode()
        )

    def run(
        self, args: Sequence[str], timeout: float = 60, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.binary), *args], input=stdin, capture_output=True, timeout=timeout, env=self.env
        )


@pytest.fixture(scope="module")
def crane_bin() -> Path:
    return _go_tool(gotools.CRANE)


@pytest.fixture(scope="module")
def regctl_bin() -> Path:
    return _go_tool(gotools.REGCTL)


def _ok(res: subprocess.CompletedProcess[bytes], deployment: Deployment, what: str) -> bytes:
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
    deployment.assert_clean(res.stdout + res.stderr, what)
    return res.stdout


def _refused(res: subprocess.CompletedProcess[bytes], deployment: Deployment, what: str) -> None:
    text = res.stderr.decode(errors="replace")
    assert res.returncode != 0, res.stdout[:2000]
    assert re.search(r"401|403|unauthori[sz]ed|denied", text, re.I), text
    deployment.assert_clean(res.stdout + res.stderr, what)


IMAGES = [
    ("vendor-basic", "oci"),
    ("vendor-basic", "index"),
    ("vendor-token", "docker"),
    ("vendor-token", "dockerlist"),
    ("vendor-anon", "oci"),
]


@pytest.mark.parametrize(("slug", "name"), IMAGES, ids=[f"{s}-{n}" for s, n in IMAGES])
def test_crane_manifest_and_digest(crane_bin: Path, deployment: Deployment, tmp_path: Path, slug: str, name: str):
    crane = Crane(crane_bin, tmp_path, deployment.host, deployment.licenses["valid"])
    img = deployment.upstreams[slug].images[name]
    base = _proxied(deployment, slug, img.repo)
    assert _ok(crane.run(["manifest", f"{base}:{img.tag}"]), deployment, "crane") == img.manifest
    assert _ok(crane.run(["manifest", f"{base}@{img.digest}"]), deployment, "crane") == img.manifest
    assert _ok(crane.run(["digest", f"{base}:{img.tag}"]), deployment, "crane").decode().strip() == img.digest


def test_crane_blob_tags_and_oci_pull(crane_bin: Path, deployment: Deployment, tmp_path: Path):
    crane = Crane(crane_bin, tmp_path / "home", deployment.host, deployment.licenses["valid"])
    img = deployment.upstreams["vendor-basic"].images["oci"]
    base = _proxied(deployment, "vendor-basic", img.repo)
    tags = _ok(crane.run(["ls", base]), deployment, "crane ls").decode().split()
    assert sorted(tags) == sorted(img.tags)
    layer, size = img.blobs[-1]
    blob = _ok(crane.run(["blob", f"{base}@{layer}"]), deployment, "crane blob")
    assert len(blob) == size and _sha256(blob) == layer
    # A whole Docker schema2 image from the token upstream, into an OCI layout.
    img = deployment.upstreams["vendor-token"].images["docker"]
    out = tmp_path / "layout"
    ref = f"{_proxied(deployment, 'vendor-token', img.repo)}:{img.tag}"
    _ok(crane.run(["pull", "--format=oci", ref, str(out)], timeout=120), deployment, "crane pull")
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [img.digest]
    stored = {f"sha256:{p.name}": p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
    assert stored[img.digest] == img.manifest
    assert set(stored) == {img.digest, *(d for d, _ in img.blobs)}
    assert all(_sha256(data) == digest for digest, data in stored.items())


def test_crane_wrong_license_fails(crane_bin: Path, deployment: Deployment, tmp_path: Path):
    img = deployment.upstreams["vendor-basic"].images["oci"]
    base = _proxied(deployment, "vendor-basic", img.repo)
    log = AccessLog(deployment)
    crane = Crane(crane_bin, tmp_path / "wrong", deployment.host, WRONG)
    _refused(crane.run(["manifest", f"{base}:{img.tag}"]), deployment, "crane, wrong license")
    # Another app's license is refused as well (a real license, for the wrong app).
    crane = Crane(crane_bin, tmp_path / "other", deployment.host, deployment.licenses["other-app"])
    _refused(crane.run(["digest", f"{base}:{img.tag}"]), deployment, "crane, other app's license")
    log.wait(lambda lines: sum(e["status"] in (401, 403) for e in lines) >= 2)
    assert log.refused() <= 6, log.lines()


@pytest.mark.parametrize(("slug", "name"), IMAGES, ids=[f"{s}-{n}" for s, n in IMAGES])
def test_regctl_manifest_and_digest(regctl_bin: Path, deployment: Deployment, tmp_path: Path, slug: str, name: str):
    regctl = Regctl(regctl_bin, tmp_path, deployment.host, deployment.licenses["valid"])
    _ok(regctl.login, deployment, "regctl login")
    img = deployment.upstreams[slug].images[name]
    base = _proxied(deployment, slug, img.repo)
    raw = ["image", "manifest", "--format", "raw-body"]
    assert _ok(regctl.run([*raw, f"{base}:{img.tag}"]), deployment, "regctl") == img.manifest
    assert _ok(regctl.run([*raw, f"{base}@{img.digest}"]), deployment, "regctl") == img.manifest
    got = _ok(regctl.run(["image", "digest", f"{base}:{img.tag}"]), deployment, "regctl").decode().strip()
    assert got == img.digest


def test_regctl_tags_and_blob(regctl_bin: Path, deployment: Deployment, tmp_path: Path):
    regctl = Regctl(regctl_bin, tmp_path, deployment.host, deployment.licenses["valid"])
    _ok(regctl.login, deployment, "regctl login")
    img = deployment.upstreams["vendor-token"].images["docker"]
    base = _proxied(deployment, "vendor-token", img.repo)
    assert _ok(regctl.run(["tag", "ls", base]), deployment, "regctl tag ls").decode().split() == img.tags
    img = deployment.upstreams["vendor-basic"].images["oci"]
    base = _proxied(deployment, "vendor-basic", img.repo)
    assert sorted(_ok(regctl.run(["tag", "ls", base]), deployment, "regctl").decode().split()) == sorted(img.tags)
    for digest, size in img.blobs:
        blob = _ok(regctl.run(["blob", "get", base, digest]), deployment, "regctl blob get")
        assert len(blob) == size and _sha256(blob) == digest


def test_regctl_wrong_license_fails(regctl_bin: Path, deployment: Deployment, tmp_path: Path):
    img = deployment.upstreams["vendor-basic"].images["oci"]
    base = _proxied(deployment, "vendor-basic", img.repo)
    log = AccessLog(deployment)
    regctl = Regctl(regctl_bin, tmp_path, deployment.host, WRONG)
    # The login itself checks the credentials against the registry.
    _refused(regctl.login, deployment, "regctl login, wrong license")
    _refused(regctl.run(["image", "digest", f"{base}:{img.tag}"]), deployment, "regctl, wrong license")
    _refused(regctl.run(["tag", "ls", base]), deployment, "regctl tag ls, wrong license")
    log.wait(lambda lines: sum(e["status"] in (401, 403) for e in lines) >= 2)
    assert log.refused() <= 8, log.lines()
