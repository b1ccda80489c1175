"""Pulls by the image's original name, through the proxy as a cluster mirror (issue 12).

A customer's manifests name `registry.basic.test/vendor/...` (the vendor's registry, which
does not even resolve here); containerd (`ctr --hosts-dir`, as Kubernetes nodes read
certs.d) and podman (registries.conf, as CRI-O reads it) send those pulls to the proxy with
the license. The snippets are the ones the portal shows (proxy.admin.mirrors).

containerd asks the token endpoint for `repository:<original repo>:pull` beside the scope of
the proxy's challenge: the token must still be granted (the Docker token spec).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.admin.mirrors import Mirror, default_hosts_toml
from tests.support import containerd as ctrd
from tests.support.ci import unavailable
from tests.support.deployment import Deployment
from tests.support.images import PushedImage, image, rootfs_layer

ENDPOINT = "registry.basic.test"  # vendor-basic's endpoint in the session deployment


@pytest.fixture(scope="module")
def rootfs_image(deployment: Deployment) -> PushedImage:
    """One unpackable linux/amd64 image (podman stores layers unpacked)."""
    return image(deployment.upstreams["vendor-basic"], "vendor/mirror-rootfs", "v1", [rootfs_layer()])


def _mirror(deployment: Deployment) -> Mirror:
    return Mirror(deployment.host, "acme", "vendor-basic", ENDPOINT, scheme="http")


def _access(deployment: Deployment, mark: int) -> list[dict]:
    lines = deployment.server.log_text().splitlines()[mark:]
    return [e for e in map(json.loads, lines) if e.get("msg") == "access"]


# -- containerd ------------------------------------------------------------------------------


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


def _hosts_dir(deployment: Deployment, tmp_path: Path) -> Path:
    hosts = tmp_path / "certs.d"
    mirror = _mirror(deployment)
    (hosts / mirror.image_host).mkdir(parents=True)
    (hosts / mirror.image_host / "hosts.toml").write_text(mirror.hosts_toml())
    return hosts


def test_containerd_pulls_by_the_original_name(containerd: ctrd.Containerd, deployment: Deployment, tmp_path: Path):
    img = deployment.upstreams["vendor-basic"].images["index"]
    original = f"{ENDPOINT}/{img.repo}:{img.tag}"
    mark = len(deployment.server.log_text().splitlines())
    res = containerd.ctr(
        [
            "content",
            "fetch",
            "--hosts-dir",
            str(_hosts_dir(deployment, tmp_path)),
            "--all-platforms",
            "--user",
            f"LICENSE_ID:{deployment.licenses['valid']}",
            original,
        ]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    deployment.assert_clean(res.stdout + res.stderr, "ctr output")
    listed = containerd.ctr(["images", "ls"]).stdout.splitlines()
    row = next(line.split() for line in listed if line.startswith(original + " "))
    assert row[2] == img.digest, listed
    assert containerd.ctr_bytes(["content", "get", img.digest]) == img.manifest
    for digest, _ in img.all_blobs():
        assert hashlib.sha256(containerd.ctr_bytes(["content", "get", digest])).hexdigest() == digest[7:]
    entries = _access(deployment, mark)
    tokens = [e for e in entries if e["route"] == "token"]
    assert tokens and all(e["status"] == 200 for e in tokens), tokens
    # containerd's resolver and its fetcher each start unauthenticated (a 401 with the challenge);
    # then every request is served.
    pulls = [e for e in entries if e["route"] in ("manifests", "blobs")]
    refused = [e["status"] for e in pulls if e["status"] != 200]
    assert set(refused) == {401} and len(refused) <= 2, [(e["route"], e["status"]) for e in pulls]
    served = [e for e in pulls if e["status"] == 200]
    assert {(e["app"], e["registry"]) for e in served} == {("acme", "vendor-basic")}


def test_containerd_pulls_and_unpacks_by_the_original_name(
    containerd: ctrd.Containerd, deployment: Deployment, rootfs_image: PushedImage, tmp_path: Path
):
    """`ctr images pull` as the README shows it: fetched through the mirror, then unpacked."""
    original = f"{ENDPOINT}/{rootfs_image.repo}:{rootfs_image.tag}"
    res = containerd.ctr(
        [
            "images",
            "pull",
            "--hosts-dir",
            str(_hosts_dir(deployment, tmp_path)),
            "--platform",
            "linux/amd64",
            "--user",
            f"LICENSE_ID:{deployment.licenses['valid']}",
            original,
        ]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    deployment.assert_clean(res.stdout + res.stderr, "ctr output")
    check = containerd.ctr(["images", "check"]).stdout
    row = next(line for line in check.splitlines() if line.startswith(original + " "))
    assert "complete" in row and row.split()[-1] == "true", check  # fetched and unpacked
    assert rootfs_image.digest in row


def test_containerd_one_default_mirror_for_every_registry(
    containerd: ctrd.Containerd, deployment: Deployment, tmp_path: Path
):
    """certs.d/_default: the mirror URL holds no registry; containerd's `?ns=` names it."""
    hosts = tmp_path / "certs.d"
    (hosts / "_default").mkdir(parents=True)
    (hosts / "_default" / "hosts.toml").write_text(default_hosts_toml(deployment.host, "acme", scheme="http"))
    img = deployment.upstreams["vendor-basic"].images["docker"]
    original = f"{ENDPOINT}/{img.repo}:{img.tag}"
    mark = len(deployment.server.log_text().splitlines())
    res = containerd.ctr(
        [
            "content",
            "fetch",
            "--hosts-dir",
            str(hosts),
            "--user",
            f"LICENSE_ID:{deployment.licenses['valid']}",
            original,
        ]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert containerd.ctr_bytes(["content", "get", img.digest]) == img.manifest
    served = [e for e in _access(deployment, mark) if e["route"] in ("manifests", "blobs") and e["status"] == 200]
    assert served and {(e["app"], e["registry"]) for e in served} == {("acme", "vendor-basic")}


def test_containerd_mirror_with_a_wrong_license_fails(
    containerd: ctrd.Containerd, deployment: Deployment, tmp_path: Path
):
    img = deployment.upstreams["vendor-basic"].images["index"]
    res = containerd.ctr(
        [
            "content",
            "fetch",
            "--hosts-dir",
            str(_hosts_dir(deployment, tmp_path)),
            "--all-platforms",
            "--user",
            "LICENSE_ID:lic-wrong-0123456789abcdef01234567",
            f"{ENDPOINT}/{img.repo}:{img.tag}",
        ]
    )
    assert res.returncode != 0
    assert not containerd.ctr(["content", "ls", "-q"]).stdout.strip()


# -- podman ----------------------------------------------------------------------------------


class Podman:
    """podman with its own storage, run root, registries.conf and auth file; never the system's."""

    def __init__(self, registries_conf: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-podman-"))
        (self.dir / "registries.conf").write_text(registries_conf)
        (self.dir / "containers.conf").write_text('[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n')
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.dir),
            "TMPDIR": str(self.dir),
            "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf"),
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
            "REGISTRY_AUTH_FILE": str(self.dir / "auth.json"),
        }

    def run(self, args: list[str], stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        base = [
            "podman",
            "--root",
            str(self.dir / "root"),
            "--runroot",
            str(self.dir / "run"),
            "--storage-driver",
            "vfs",
            "--tmpdir",
            str(self.dir / "tmp"),
        ]
        return subprocess.run(
            [*base, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=self.env
        )

    def stop(self) -> None:
        self.run(["system", "reset", "--force"], timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def podman(deployment: Deployment) -> Iterator[Podman]:
    if shutil.which("podman") is None:
        unavailable("podman not installed (Debian package `podman`)")
    if os.geteuid() != 0:
        unavailable("podman's storage here needs root (tests use a private --root and --runroot)")
    p = Podman(_mirror(deployment).registries_conf(insecure=True))
    try:
        yield p
    finally:
        p.stop()


def test_podman_pulls_by_the_original_name(podman: Podman, deployment: Deployment, rootfs_image: PushedImage):
    img = rootfs_image
    login = podman.run(
        ["login", "--tls-verify=false", "-u", "LICENSE_ID", "--password-stdin", deployment.host],
        stdin=deployment.licenses["valid"],
    )
    assert login.returncode == 0, login.stderr
    original = f"{ENDPOINT}/{img.repo}:{img.tag}"
    mark = len(deployment.server.log_text().splitlines())
    res = podman.run(["pull", original])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    deployment.assert_clean(res.stdout + res.stderr, "podman pull")
    inspect = json.loads(podman.run(["image", "inspect", original]).stdout)
    assert inspect[0]["Digest"] == img.digest
    assert inspect[0]["RootFS"]["Layers"] == [img.layers[0].diff_id]
    pulls = [e for e in _access(deployment, mark) if e["route"] in ("manifests", "blobs") and e["status"] == 200]
    assert {(e["app"], e["registry"]) for e in pulls} == {("acme", "vendor-basic")}


def test_podman_mirror_with_a_wrong_license_fails(podman: Podman, deployment: Deployment, rootfs_image: PushedImage):
    res = podman.run(
        ["pull", "--creds", "LICENSE_ID:lic-wrong-0123456789abcdef01234567", f"{ENDPOINT}/{rootfs_image.ref}"],
        timeout=120,
    )
    assert res.returncode != 0
    deployment.assert_clean(res.stdout + res.stderr, "podman, wrong license")
