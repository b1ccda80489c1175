"""The Dockerfile, parsed (no Docker engine): two pinned stages, wheels built in the first
and installed offline in a non-root runtime, a working default config. The Helm chart
and the kustomize base are rendered in tests/integration/test_deploy.py."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path
from typing import Any

from proxy.config import load

ROOT = Path(__file__).resolve().parents[2]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation with no end"
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for word, rest in instructions:
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, rest
            stages.append({"image": m.group(1), "name": m.group(2), "steps": []})
        else:
            assert stages, f"{word} before FROM"
            stages[-1]["steps"].append((word, rest))
    return stages


def test_dockerfile_two_pinned_stages_and_a_non_root_runtime(tmp_path: Path) -> None:
    stages = _stages(_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")))
    assert [s["name"] for s in stages] == ["build", "runtime"]
    for s in stages:
        # A full version tag AND the digest: the tag says what it is, the digest what it must be.
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}", s["image"]), s["image"]
    build, runtime = stages
    assert build["image"] == runtime["image"], "both stages from the same base"

    # The build stage makes the wheels; the runtime installs them from it, offline.
    assert any(w == "RUN" and "pip wheel" in r for w, r in build["steps"])
    runs = [r for w, r in runtime["steps"] if w == "RUN"]
    assert any("--mount=type=bind,from=build" in r and "--no-index" in r for r in runs)
    assert not any("pip wheel" in r or "setup.py" in r for r in runs)
    for tool in ("gcc", "g++", "make", "build-essential", "git", "apt-get install"):
        assert not any(re.search(rf"(^|\s){re.escape(tool)}(\s|$)", r) for r in runs), tool
    assert any("pip uninstall" in r and "pip" in r.split("uninstall", 1)[1] for r in runs), "no pip in the runtime"
    assert not any(w == "COPY" and "--from=build" in r for w, r in runtime["steps"]), "wheels left in a layer"

    # The last USER is numeric and not root.
    users = [r for w, r in runtime["steps"] if w == "USER"]
    assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]), users
    assert all(int(part) != 0 for part in users[-1].split(":"))
    entry = [r for w, r in runtime["steps"] if w == "ENTRYPOINT"]
    assert entry == ['["pullgate"]']

    # Every COPY source exists and is not excluded from the build context.
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: dict[str, str] = {}
    for s in stages:
        for word, rest in s["steps"]:
            if word != "COPY" or "--from=" in rest:
                continue
            *sources, dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
                assert not any(fnmatch.fnmatch(src, pat) or src.startswith(pat + "/") for pat in ignored), src
                copied[src] = dest

    # No PULLGATE_<SECTION>_<KEY> default: it would override the file Kubernetes mounts.
    envs = " ".join(r for w, r in runtime["steps"] if w == "ENV")
    names = set(re.findall(r"\b(PULLGATE_[A-Z_]+)=", envs))
    assert names == {"PULLGATE_CONFIG"}, names
    # The image's default config is a working pullgate config.
    (src,) = [s for s, d in copied.items() if d == "/etc/pullgate/config.yaml"]
    cfg = load(ROOT / src, environ={})
    assert cfg.admin.listen == "0.0.0.0:8081" and cfg.proxy.listen == "0.0.0.0:8080"
    assert cfg.store == "sqlite:///var/lib/pullgate/pullgate.db"
