"""OCI distribution-spec conformance suite, pull workflow only, read-only.

The suite is built from the Go module proxy (no git, no GitHub) and cached
under .cache/conformance/<version>/ so later runs start at once.

The `conformance` directory of distribution-spec is its own Go module with no
release tag: the proxy serves it only as pseudo-versions (the parent module's
v1.1.1 zip leaves it out, as Go does for nested modules). We pin the ginkgo
suite of the v1.1.0 release candidates, the suite of the released 1.1 line. The newest pseudo-version
(2026-08, a rewrite) panics in read-only mode before writing its reports
(ReportResultsYAML on skipped blob tests), so it is not the default; it can be
tried with PULLGATE_CONFORMANCE_VERSION, and the environment below is a
superset that both understand.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "github.com/opencontainers/distribution-spec/conformance"
PINNED = "v0.0.0-20231101194043-f2182352d4cc"  # 2023-11-01, before v1.1.0 (2024-02)
VERSION = os.environ.get("PULLGATE_CONFORMANCE_VERSION", PINNED)
SUITE = "OCI Distribution Conformance Tests"  # prefix of every ginkgo spec name
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "conformance"


class ConformanceBuildError(RuntimeError):
    """Go is missing or the suite did not build (the caller decides skip or fail)."""


@dataclass
class ConformanceResult:
    passed: int
    failed: int
    skipped: int
    failures: list[str] = field(default_factory=list)
    returncode: int = 0
    output: str = ""
    workdir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0

    def summary(self) -> str:
        text = f"passed={self.passed} failed={self.failed} skipped={self.skipped}"
        if self.failures:
            text += "\nfailing: " + "; ".join(self.failures)
        if not self.ok:
            text += f"\nexit {self.returncode}, report in {self.workdir}\n{self.output[-3000:]}"
        return text


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # local: never fetch another toolchain; mod: go.sum may need entries added.
    env.update(GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    return env


def build_conformance(version: str = VERSION) -> Path:
    """Return the suite's test binary, building it once per version."""
    out_dir = CACHE / version
    binary = out_dir / "conformance.test"
    if binary.exists():
        return binary
    go = find_go()
    if go is None:
        raise ConformanceBuildError("no `go` on PATH nor /usr/local/go/bin/go")
    out_dir.mkdir(parents=True, exist_ok=True)
    # One builder at a time (parallel pytest workers, concurrent CI jobs).
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        env = _go_env()
        src = out_dir / "src"
        started = time.monotonic()
        try:
            dl = subprocess.run(
                [go, "mod", "download", "-json", f"{MODULE}@{version}"],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                cwd=out_dir,
            )
            info = json.loads(dl.stdout or "{}")
            if dl.returncode or "Dir" not in info:
                raise ConformanceBuildError(f"go mod download: {info.get('Error') or dl.stderr}")
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(info["Dir"], src)
            for path in [src, *src.rglob("*")]:  # the module cache is read-only
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
            tmp = out_dir / "conformance.test.tmp"
            built = subprocess.run(
                [go, "test", "-c", "-o", str(tmp), "."],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
                cwd=src,
            )
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            raise ConformanceBuildError(f"building {MODULE}@{version}: {exc}") from exc
        if built.returncode or not tmp.exists():
            raise ConformanceBuildError(f"go test -c failed:\n{built.stdout}{built.stderr}")
        tmp.rename(binary)  # atomic: a half-written binary is never cached
        (out_dir / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    return binary


def pull_env(
    root_url: str,
    namespace: str,
    username: str,
    password: str,
    tag: str,
    manifest_digest: str,
    blob_digest: str,
    workdir: Path,
) -> dict[str, str]:
    """Environment for the pull workflow against pre-seeded content, never writing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.update(
        OCI_ROOT_URL=root_url,
        OCI_NAMESPACE=namespace,
        OCI_USERNAME=username,
        OCI_PASSWORD=password,
        # all three given = read-only: no setup pushes, no teardown deletes
        OCI_TAG_NAME=tag,
        OCI_MANIFEST_DIGEST=manifest_digest,
        OCI_BLOB_DIGEST=blob_digest,
        OCI_TEST_PULL="1",
        OCI_TEST_PUSH="0",
        OCI_TEST_CONTENT_DISCOVERY="0",
        OCI_TEST_CONTENT_MANAGEMENT="0",
        OCI_HIDE_SKIPPED_WORKFLOWS="1",
        OCI_DEBUG="0",
        OCI_REPORT_DIR=str(workdir),
        OCI_RESULTS_DIR=str(workdir),
        # the rewritten (newer) suite leaves push/delete on whatever the legacy vars say
        OCI_API_PUSH="false",
        OCI_API_BLOBS_DELETE="false",
        OCI_API_MANIFESTS_DELETE="false",
        OCI_API_TAGS_DELETE="false",
        OCI_CONFIGURATION=os.devnull,
    )
    return env


def parse_junit(path: Path) -> tuple[int, int, int, list[str]]:
    passed = failed = skipped = 0
    failures: list[str] = []
    # written by the suite binary we built, not by a remote party
    for case in ET.parse(path).iter("testcase"):  # noqa: S314
        status = (case.get("status") or "").lower()
        name = case.get("name") or "?"
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            failures.append(name.removeprefix("[It] ").removeprefix(SUITE + " "))
        elif name.startswith("[") and not name.startswith("[It]"):
            continue  # ginkgo's suite/reporter nodes are not specs
        elif case.find("skipped") is not None or status in {"skipped", "disabled", "pending"}:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, failures


def run_conformance(
    root_url: str,
    namespace: str,
    username: str,
    password: str,
    *,
    tag: str,
    manifest_digest: str,
    blob_digest: str,
    workdir: Path,
    timeout: float = 300,
    version: str = VERSION,
) -> ConformanceResult:
    binary = build_conformance(version)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    junit = workdir / "junit.xml"
    junit.unlink(missing_ok=True)
    env = pull_env(root_url, namespace, username, password, tag, manifest_digest, blob_digest, workdir)
    try:
        proc = subprocess.run(
            [str(binary), "-test.v", f"-test.timeout={int(timeout)}s"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"timed out after {timeout}s: {exc.stdout!r}", -1
    (workdir / "output.txt").write_text(output)
    if not junit.exists():
        return ConformanceResult(0, 1, 0, ["(no junit.xml written)"], code, output, workdir)
    passed, failed, skipped, failures = parse_junit(junit)
    return ConformanceResult(passed, failed, skipped, failures, code, output, workdir)
