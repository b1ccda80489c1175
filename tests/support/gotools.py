"""Go command-line tools (crane, regctl, helm 3 and 4, oras, kustomize, versitygw) built from the Go
module proxy, cached.

`go install <package>@<version>` with GOBIN=.cache/gotools/<tool>-<version>/, so a
version is built once and later runs start at once. GOTOOLCHAIN=local: the
machine's own Go builds it (never a downloaded toolchain). A file lock per tool
keeps parallel pytest workers or concurrent CI jobs from building twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "gotools"


class GoToolBuildError(RuntimeError):
    """Go is missing or the tool did not build (the caller decides skip or fail)."""


@dataclass(frozen=True)
class GoTool:
    name: str
    package: str
    version: str

    @property
    def dir(self) -> Path:
        return CACHE / f"{self.name}-{self.version}"

    @property
    def binary(self) -> Path:
        return self.dir / self.name


CRANE = GoTool("crane", "github.com/google/go-containerregistry/cmd/crane", "v0.22.1")
REGCTL = GoTool("regctl", "github.com/regclient/regclient/cmd/regctl", "v0.11.7")
# helm v3.20 needs Go >= 1.25, kustomize v5.8.1 Go >= 1.24 (v5.8.3 needs 1.27).
HELM = GoTool("helm", "helm.sh/helm/v3/cmd/helm", "v3.20.2")
HELM4 = GoTool("helm", "helm.sh/helm/v4/cmd/helm", "v4.3.2")
ORAS = GoTool("oras", "oras.land/oras/cmd/oras", "v1.3.6")
KUSTOMIZE = GoTool("kustomize", "sigs.k8s.io/kustomize/kustomize/v5", "v5.8.1")
# The Versity S3 Gateway (Apache-2.0): a real S3 API over a POSIX directory, for the S3 cache.
VERSITYGW = GoTool("versitygw", "github.com/versity/versitygw/cmd/versitygw", "v1.8.0")


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None


def build(tool: GoTool, timeout: float = 900) -> Path:
    """Return the tool's binary, building it once per version."""
    if tool.binary.exists():
        return tool.binary
    go = find_go()
    if go is None:
        raise GoToolBuildError("no `go` on PATH nor /usr/local/go/bin/go")
    tool.dir.mkdir(parents=True, exist_ok=True)
    with open(tool.dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tool.binary.exists():
            return tool.binary
        # Built into a staging GOBIN, then renamed: a half-written binary is never cached.
        staging = tool.dir / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        env = dict(os.environ)
        env.update(
            GOTOOLCHAIN="local",
            GOFLAGS="-mod=mod -buildvcs=false",
            CGO_ENABLED="0",
            GOBIN=str(staging),
        )
        started = time.monotonic()
        try:
            res = subprocess.run(
                [go, "install", f"{tool.package}@{tool.version}"],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                cwd=tool.dir,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GoToolBuildError(f"building {tool.package}@{tool.version}: {exc}") from exc
        built = staging / tool.name
        if res.returncode or not built.exists():
            raise GoToolBuildError(f"go install {tool.package}@{tool.version} failed:\n{res.stdout}{res.stderr}")
        built.rename(tool.binary)
        shutil.rmtree(staging, ignore_errors=True)
        (tool.dir / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    return tool.binary


# A registry with the OCI referrers API (which the Debian docker-registry, distribution 2.8,
# lacks, as does distribution v3.1.2): a few lines over go-containerregistry's pkg/registry,
# built from tests/support/referrers_registry/ with the go.mod and go.sum kept there.
REFERRERS_REGISTRY_SRC = Path(__file__).resolve().parent / "referrers_registry"


def build_local(name: str, source: Path, timeout: float = 900) -> Path:
    """`go build` of a small module kept in this repository, cached by its sources' hash."""
    digest = hashlib.sha256()
    for path in sorted(source.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    tool = GoTool(name, str(source), digest.hexdigest()[:12])
    if tool.binary.exists():
        return tool.binary
    go = find_go()
    if go is None:
        raise GoToolBuildError("no `go` on PATH nor /usr/local/go/bin/go")
    tool.dir.mkdir(parents=True, exist_ok=True)
    with open(tool.dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tool.binary.exists():
            return tool.binary
        staging = tool.dir / f".{name}.staging"
        env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=readonly -buildvcs=false", CGO_ENABLED="0")
        try:
            res = subprocess.run(
                [go, "build", "-o", str(staging), "."],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                cwd=source,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GoToolBuildError(f"building {source}: {exc}") from exc
        if res.returncode or not staging.exists():
            raise GoToolBuildError(f"go build in {source} failed:\n{res.stdout}{res.stderr}")
        staging.rename(tool.binary)
    return tool.binary
