"""OCI artifacts and Helm charts through the proxy, with the real clients (issue 12).

The vendor pushes to its own registry directly (oras push/attach, helm push); the
customer pulls through the proxy with nothing but the license: oras pull, discover,
cp -r; helm registry login, pull, show chart, template. The upstream of the session
deployment is distribution 2.8, which has no referrers API: oras must fall back to the
referrers tag schema through the proxy. go-containerregistry's registry (built from
tests/support/referrers_registry/) has the API: its answers must pass through unchanged.

CI must run these: a client that cannot be had fails there (CI=true) and is skipped,
with the reason, elsewhere.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import gotools
from tests.support.ci import unavailable
from tests.support.deployment import Deployment
from tests.support.procs import ManagedProcess, free_port, wait_http
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

ARTIFACT_TYPE = "application/vnd.pullgate.test.config"
SIGNATURE_TYPE = "application/vnd.pullgate.test.signature"
SBOM_TYPE = "application/vnd.pullgate.test.sbom"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _go_tool(tool: gotools.GoTool) -> Path:
    try:
        return gotools.build(tool)
    except gotools.GoToolBuildError as exc:
        unavailable(f"{tool.name} {tool.version} unavailable: {exc}")


def _env(home: Path) -> dict[str, str]:
    # Only loopback is contacted: no proxy settings from the caller's environment.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home)}


class Oras:
    """oras with a private HOME and registry config; every registry here is plain HTTP."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.config = home / "registry-config.json"

    def run(
        self, args: Sequence[str], stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(self.home),
            cwd=self.home,
        )

    def ok(self, args: Sequence[str], stdin: str | None = None) -> str:
        res = self.run(args, stdin)
        assert res.returncode == 0, f"oras {' '.join(args)}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        return res.stdout

    def login(self, host: str, user: str, password: str) -> None:
        self.ok(
            ["login", "--plain-http", "--registry-config", str(self.config), "-u", user, "--password-stdin", host],
            password,
        )

    def referrers(self, ref: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        """`oras discover --format json`: the referrers' descriptors (any depth)."""
        args = ["discover", "--plain-http", "--registry-config", str(self.config), "--format", "json", ref]
        if artifact_type:
            args += ["--artifact-type", artifact_type]
        return list(_descriptors(json.loads(self.ok(args)).get("referrers") or []))


def _descriptors(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for node in nodes:
        yield node
        yield from _descriptors(node.get("referrers") or [])


@pytest.fixture(scope="module")
def oras_bin() -> Path:
    return _go_tool(gotools.ORAS)


def _vendor_pushes_artifact(oras: Oras, upstream: Registry | str, repo: str) -> dict[str, str]:
    """What a vendor does: push an artifact, then attach a signature and an SBOM to it."""
    if isinstance(upstream, Registry):
        assert upstream.username and upstream.password
        oras.login(upstream.host, upstream.username, upstream.password)
    host = upstream.host if isinstance(upstream, Registry) else upstream
    (oras.home / "hello.txt").write_text("pulled through pullgate\n")
    (oras.home / "sig.txt").write_text("signed by the vendor\n")
    (oras.home / "sbom.json").write_text('{"packages": []}\n')
    cfg = ["--plain-http", "--registry-config", str(oras.config)]
    ref = f"{host}/{repo}:v1"
    oras.ok(["push", *cfg, "--artifact-type", ARTIFACT_TYPE, ref, "hello.txt:text/plain"])
    subject = oras.ok(["resolve", *cfg, ref]).strip()
    oras.ok(["attach", *cfg, "--artifact-type", SIGNATURE_TYPE, ref, "sig.txt:text/plain"])
    oras.ok(["attach", *cfg, "--artifact-type", SBOM_TYPE, ref, "sbom.json:application/json"])
    return {"subject": subject, "ref": ref}


# -- through the session deployment: a distribution 2.8 upstream, no referrers API -------------


@pytest.fixture(scope="module")
def artifact(oras_bin: Path, deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    repo = f"vendor/artifact-{secrets.token_hex(4)}"
    pushed = _vendor_pushes_artifact(
        Oras(oras_bin, tmp_path_factory.mktemp("vendor-oras")), deployment.upstreams["vendor-basic"], repo
    )
    return {**pushed, "proxied": f"{deployment.host}/proxy/acme/vendor-basic/{repo}"}


@pytest.fixture
def customer_oras(oras_bin: Path, deployment: Deployment, tmp_path: Path) -> Oras:
    oras = Oras(oras_bin, tmp_path / "customer")
    oras.login(deployment.host, "LICENSE_ID", deployment.licenses["valid"])
    return oras


def test_oras_pull_through_the_proxy(customer_oras: Oras, deployment: Deployment, artifact: dict[str, str]):
    out = customer_oras.home / "out"
    cfg = ["--plain-http", "--registry-config", str(customer_oras.config)]
    text = customer_oras.ok(["pull", *cfg, "-o", str(out), f"{artifact['proxied']}:v1"])
    deployment.assert_clean(text, "oras pull")
    assert (out / "hello.txt").read_text() == "pulled through pullgate\n"
    assert customer_oras.ok(["resolve", *cfg, f"{artifact['proxied']}:v1"]).strip() == artifact["subject"]


def test_oras_discover_falls_back_to_the_tag_schema(
    customer_oras: Oras, deployment: Deployment, artifact: dict[str, str]
):
    """distribution 2.8 has no referrers API: oras must see a 404 that is not NAME_UNKNOWN."""
    found = customer_oras.referrers(f"{artifact['proxied']}:v1")
    assert sorted(d["artifactType"] for d in found) == sorted([SIGNATURE_TYPE, SBOM_TYPE]), found
    # The tag schema's index holds exactly what the vendor's registry does.
    direct = Oras(customer_oras.binary, customer_oras.home / "direct")
    upstream = deployment.upstreams["vendor-basic"]
    assert upstream.username and upstream.password
    direct.login(upstream.host, upstream.username, upstream.password)
    assert {d["digest"] for d in found} == {d["digest"] for d in direct.referrers(artifact["ref"])}
    only = customer_oras.referrers(f"{artifact['proxied']}:v1", SIGNATURE_TYPE)
    assert [d["artifactType"] for d in only] == [SIGNATURE_TYPE]


def test_oras_discover_of_an_unknown_repository_fails(customer_oras: Oras, deployment: Deployment):
    res = customer_oras.run(
        [
            "discover",
            "--plain-http",
            "--registry-config",
            str(customer_oras.config),
            f"{deployment.host}/proxy/acme/vendor-basic/vendor/no-such-repo-{secrets.token_hex(3)}:v1",
        ]
    )
    assert res.returncode != 0 and "not found" in res.stderr.lower(), res.stderr


def test_oras_copy_with_referrers_out_of_the_proxy(
    customer_oras: Oras, deployment: Deployment, artifact: dict[str, str], tmp_path: Path
):
    """`oras cp -r`: the artifact and everything referring to it, into the customer's own registry."""
    with Registry("none", name="customer-registry") as target:
        dest = f"{target.host}/mirror/artifact:v1"
        text = customer_oras.ok(
            [
                "cp",
                "-r",
                "--from-plain-http",
                "--to-plain-http",
                "--from-registry-config",
                str(customer_oras.config),
                f"{artifact['proxied']}:v1",
                dest,
            ]
        )
        deployment.assert_clean(text, "oras cp")
        copied = Oras(customer_oras.binary, tmp_path / "target")
        assert copied.ok(["resolve", "--plain-http", dest]).strip() == artifact["subject"]
        assert sorted(d["artifactType"] for d in copied.referrers(dest)) == sorted([SIGNATURE_TYPE, SBOM_TYPE])


def test_oras_wrong_license_is_refused(
    oras_bin: Path, deployment: Deployment, artifact: dict[str, str], tmp_path: Path
):
    oras = Oras(oras_bin, tmp_path)
    res = oras.run(
        [
            "login",
            "--plain-http",
            "--registry-config",
            str(oras.config),
            "-u",
            "LICENSE_ID",
            "--password-stdin",
            deployment.host,
        ],
        "lic-wrong-0123456789abcdef01234567",
    )
    assert res.returncode != 0 and re.search(r"401|unauthori[sz]ed", res.stderr, re.I), res.stderr
    res = oras.run(["pull", "--plain-http", "--registry-config", str(oras.config), f"{artifact['proxied']}:v1"])
    assert res.returncode != 0
    deployment.assert_clean(res.stdout + res.stderr, "oras, wrong license")


# -- an upstream with the referrers API: its index passes through unchanged ----------------------


@pytest.fixture(scope="module")
def api_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """go-containerregistry's registry with its referrers API on (no auth): its host."""
    try:
        binary = gotools.build_local("referrers-registry", gotools.REFERRERS_REGISTRY_SRC)
    except gotools.GoToolBuildError as exc:
        unavailable(f"the referrers registry did not build: {exc}")
    workdir = tmp_path_factory.mktemp("referrers-registry")
    host = f"127.0.0.1:{free_port()}"
    proc = ManagedProcess([str(binary), "-addr", host], workdir, "referrers-registry", env=_env(workdir))
    try:
        wait_http(f"http://{host}/v2/", 15, proc)
        yield host
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def api_proxy(api_upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pullgate, str]]:
    license_id = f"lic-api-{secrets.token_hex(12)}"
    registry = {
        "slug": "vendor-api",
        "provider": "other",
        "endpoint": "registry.api.test",
        "url": f"http://{api_upstream}",
        "insecure": True,
    }
    customer = {"name": "C", "email": "c@example.test", "app": "acme", "license_id_env": "PGT_API_LIC"}
    teams = [{"name": "acme", "apps": [{"slug": "acme"}], "registries": [registry], "customers": [customer]}]
    server = Pullgate(tmp_path_factory.mktemp("pullgate-api"), teams, env={"PGT_API_LIC": license_id}).start()
    try:
        yield server, license_id
    finally:
        server.stop()


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()} if auth else {}
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback test URL
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback test URL
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _unordered(index: bytes) -> dict[str, Any]:
    doc = json.loads(index)
    return {**doc, "manifests": sorted(doc["manifests"], key=lambda d: d["digest"])}


def test_referrers_api_passes_through_unchanged(
    oras_bin: Path, api_upstream: str, api_proxy: tuple[Pullgate, str], tmp_path: Path
):
    server, license_id = api_proxy
    repo = "vendor/with-api"
    vendor = Oras(oras_bin, tmp_path / "vendor")
    subject = _vendor_pushes_artifact(vendor, api_upstream, repo)["subject"]
    customer = ("LICENSE_ID", license_id)
    for query in ("", f"?artifactType={SIGNATURE_TYPE}"):
        status, up_headers, up_body = _get(f"http://{api_upstream}/v2/{repo}/referrers/{subject}{query}")
        assert status == 200 and len(json.loads(up_body)["manifests"]) == 2
        path = f"/v2/proxy/acme/vendor-api/{repo}/referrers/{subject}{query}"
        status, headers, body = _get(f"{server.url}{path}", customer)
        # The upstream's index as it sent it (this registry lists referrers in Go's map order, so
        # two answers may differ in order only).
        assert status == 200 and len(body) == len(up_body) and _unordered(body) == _unordered(up_body)
        assert headers["Content-Type"] == up_headers["Content-Type"] == OCI_INDEX  # exactly: oras checks it
        assert headers.get("OCI-Filters-Applied") == up_headers.get("OCI-Filters-Applied")
    # A repository the registry does not know stays NAME_UNKNOWN (oras: "not found", no fallback).
    status, _, body = _get(f"{server.url}/v2/proxy/acme/vendor-api/vendor/nothing/referrers/{subject}", customer)
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    # oras through the proxy lists what it lists at the registry itself.
    oras = Oras(oras_bin, tmp_path / "customer")
    oras.login(server.host, *customer)
    proxied = {d["digest"] for d in oras.referrers(f"{server.host}/proxy/acme/vendor-api/{repo}:v1")}
    assert len(proxied) == 2 and proxied == {d["digest"] for d in vendor.referrers(f"{api_upstream}/{repo}:v1")}


# -- Helm charts ------------------------------------------------------------------------------


class Helm:
    """helm with private config, cache and data directories."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **_env(home),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
            "HELM_REGISTRY_CONFIG": str(home / "registry.json"),
        }

    def run(self, args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
            cwd=self.home,
        )

    def ok(self, args: Sequence[str], stdin: str | None = None) -> str:
        res = self.run(args, stdin)
        assert res.returncode == 0, f"helm {' '.join(args)}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        return res.stdout + res.stderr

    def login(self, host: str, user: str, password: str) -> str:
        return self.ok(["registry", "login", "--plain-http", host, "--username", user, "--password-stdin"], password)


HELMS = [gotools.HELM, gotools.HELM4]


@pytest.fixture(scope="module", params=HELMS, ids=[t.version for t in HELMS])
def helm_bin(request: pytest.FixtureRequest) -> Path:
    return _go_tool(request.param)


CHART = """apiVersion: v2
name: pgchart
description: A chart pulled through pullgate
version: 0.1.0
appVersion: "1.4"
"""
DEPLOYMENT = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  image: "{{ .Values.image }}"
"""


@pytest.fixture(scope="module")
def chart(helm_bin: Path, deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """The vendor packages a chart and pushes it to its own registry: (the proxied reference, the package)."""
    helm = Helm(helm_bin, tmp_path_factory.mktemp("vendor-helm"))
    src = helm.home / "pgchart"
    (src / "templates").mkdir(parents=True)
    (src / "Chart.yaml").write_text(CHART)
    (src / "values.yaml").write_text("image: registry.basic.test/vendor/api:1.4\n")
    (src / "templates" / "settings.yaml").write_text(DEPLOYMENT)
    helm.ok(["package", str(src), "-d", str(helm.home)])
    upstream = deployment.upstreams["vendor-basic"]
    assert upstream.username and upstream.password
    helm.login(upstream.host, upstream.username, upstream.password)
    namespace = f"vendor/charts-{secrets.token_hex(3)}"
    helm.ok(["push", "--plain-http", str(helm.home / "pgchart-0.1.0.tgz"), f"oci://{upstream.host}/{namespace}"])
    package = (helm.home / "pgchart-0.1.0.tgz").read_bytes()
    return f"oci://{deployment.host}/proxy/acme/vendor-basic/{namespace}/pgchart", package


@pytest.fixture
def customer_helm(helm_bin: Path, deployment: Deployment, tmp_path: Path) -> Helm:
    helm = Helm(helm_bin, tmp_path / "customer")
    out = helm.login(deployment.host, "LICENSE_ID", deployment.licenses["valid"])
    assert "Login Succeeded" in out, out
    deployment.assert_clean(out, "helm registry login")
    return helm


def test_helm_pull_show_and_template_through_the_proxy(
    customer_helm: Helm, deployment: Deployment, chart: tuple[str, bytes]
):
    chart_ref, package = chart
    pulled = customer_helm.ok(["pull", chart_ref, "--version", "0.1.0", "--plain-http", "-d", str(customer_helm.home)])
    deployment.assert_clean(pulled, "helm pull")
    assert (customer_helm.home / "pgchart-0.1.0.tgz").read_bytes() == package  # the vendor's very bytes
    shown = customer_helm.ok(["show", "chart", chart_ref, "--version", "0.1.0", "--plain-http"])
    assert "name: pgchart" in shown and 'appVersion: "1.4"' in shown, shown
    rendered = customer_helm.ok(["template", "rel", chart_ref, "--version", "0.1.0", "--plain-http"])
    assert "name: rel-settings" in rendered and 'image: "registry.basic.test/vendor/api:1.4"' in rendered, rendered


def test_helm_wrong_license_is_refused(
    helm_bin: Path, deployment: Deployment, chart: tuple[str, bytes], tmp_path: Path
):
    helm = Helm(helm_bin, tmp_path)
    res = helm.run(
        ["registry", "login", "--plain-http", deployment.host, "--username", "LICENSE_ID", "--password-stdin"],
        "lic-wrong-0123456789abcdef01234567",
    )
    assert res.returncode != 0, res.stdout
    res = helm.run(["pull", chart[0], "--version", "0.1.0", "--plain-http", "-d", str(tmp_path)])
    assert res.returncode != 0 and not (tmp_path / "pgchart-0.1.0.tgz").exists()
    deployment.assert_clean(res.stdout + res.stderr, "helm, wrong license")
