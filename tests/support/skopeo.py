"""skopeo wrappers for tests: plain-HTTP loopback, and a private HOME/authfile/policy.

Nothing here reads the real user's auth files or /etc/containers/policy.json.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

SKOPEO = "skopeo"


@cache
def _home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="pullgate-skopeo-"))
    atexit.register(shutil.rmtree, home, True)
    (home / "auth.json").write_text('{"auths": {}}')
    (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return home


def _run(
    args: Sequence[str], timeout: float, check: bool, hosts_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    home = _home()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    argv = [SKOPEO, "--policy", str(home / "policy.json"), *args]
    if hosts_file is not None:
        # Names resolved from our own hosts file, in a private mount namespace:
        # the machine's /etc/hosts is untouched.
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        argv = ["unshare", "--mount", "sh", "-c", script, str(hosts_file), *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=check)


def copy(
    src: str,
    dest_dir: Path | str,
    creds: str | None = None,
    all: bool = False,
    tls_verify: bool = False,
    timeout: float = 300,
    check: bool = False,
    extra_args: Sequence[str] = (),
    hosts_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`skopeo copy <src> dir:<dest_dir>`; `src` like `docker://127.0.0.1:5000/repo:tag`."""
    home = _home()
    args = ["copy", f"--src-tls-verify={str(tls_verify).lower()}"]
    args += ["--src-authfile", str(home / "auth.json")]
    if creds is not None:
        args += ["--src-creds", creds]
    else:
        args += ["--src-no-creds"]
    if all:
        args.append("--all")
    return _run([*args, *extra_args, src, f"dir:{dest_dir}"], timeout, check, hosts_file)


def inspect_raw(
    ref: str,
    creds: str | None = None,
    tls_verify: bool = False,
    timeout: float = 60,
    check: bool = False,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`skopeo inspect --raw <ref>`: stdout is the manifest exactly as served."""
    home = _home()
    args = ["inspect", "--raw", f"--tls-verify={str(tls_verify).lower()}"]
    args += ["--authfile", str(home / "auth.json")]
    args += ["--creds", creds] if creds is not None else ["--no-creds"]
    return _run([*args, *extra_args, ref], timeout, check)


def list_tags(
    ref: str,
    creds: str | None = None,
    tls_verify: bool = False,
    timeout: float = 60,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`skopeo list-tags <docker://host/repo>`: JSON {"Repository", "Tags"} on stdout."""
    home = _home()
    args = ["list-tags", f"--tls-verify={str(tls_verify).lower()}"]
    args += ["--authfile", str(home / "auth.json")]
    args += ["--creds", creds] if creds is not None else ["--no-creds"]
    return _run([*args, ref], timeout, check)
