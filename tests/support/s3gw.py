"""A real S3 server on loopback: the Versity S3 Gateway (versitygw, Apache-2.0) serving a
temporary directory through its POSIX backend, with a root access key of its own.

Built from the Go module proxy once (tests/support/gotools.py). `S3Gateway` starts it on a
free loopback port, waits (polled, with a deadline) until it answers signed S3 requests, and
stops it; `create_bucket` makes a bucket through the S3 API itself. The `s3gw` fixture (a
pytest plugin listed in tests/conftest.py) is one gateway per session; `s3_bucket` a fresh,
empty bucket per test.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support import gotools
from tests.support.ci import unavailable
from tests.support.procs import ManagedProcess, free_port

REGION = "us-east-1"


class S3Gateway:
    """versitygw on 127.0.0.1:<free port>, root credentials `access_key`/`secret_key`."""

    def __init__(self, binary: Path, root: Path | None = None, log_dir: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="pullgate-s3gw-")) if root is None else root
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.access_key = f"testroot{secrets.token_hex(4)}"
        self.secret_key = f"canary-s3-secret-{secrets.token_hex(12)}"
        self.port = free_port()
        argv = [
            str(binary),
            "--access",
            self.access_key,
            "--secret",
            self.secret_key,
            "--region",
            REGION,
            "--port",
            f"127.0.0.1:{self.port}",
            "posix",
            str(self.data),
        ]
        self.proc = ManagedProcess(argv, log_dir or self.root, "versitygw")
        try:
            self._wait_ready(30)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signed(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One SigV4-signed request with the root key (set-up and checks, not the code under test)."""
        url = f"{self.url}{path}"
        req = AWSRequest(method=method, url=url, data=body)
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", REGION).add_auth(req)
        prepared = urllib.request.Request(url, data=body or None, method=method, headers=dict(req.headers.items()))  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(prepared, timeout=10) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _wait_ready(self, timeout: float) -> None:
        """Ready when a signed ListBuckets answers 200 (a listening socket is not enough: the
        gateway must also have loaded its backend and accept the root key)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"versitygw exited early:\n{self.proc.log_text()[-4000:]}")
            try:
                status, body = self.signed("GET", "/")
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise TimeoutError(f"versitygw not ready on {self.url} in {timeout} s: {last}")

    def create_bucket(self, name: str) -> str:
        status, body = self.signed("PUT", f"/{name}")
        if status != 200:
            raise RuntimeError(f"CreateBucket {name}: HTTP {status} {body[:300]!r}")
        return name

    def log_text(self) -> str:
        return self.proc.log_text()

    def stop(self) -> None:
        self.proc.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> S3Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_binary() -> Path:
    """The versitygw binary, built once; a test that needs it fails in CI, skips elsewhere."""
    try:
        return gotools.build(gotools.VERSITYGW)
    except gotools.GoToolBuildError as exc:
        unavailable(f"versitygw (the S3 server of the tests) cannot be built: {exc}")


@pytest.fixture(scope="session")
def s3gw() -> Iterator[S3Gateway]:
    with S3Gateway(gateway_binary()) as gw:
        yield gw


@pytest.fixture
def s3_bucket(s3gw: S3Gateway) -> str:
    """A fresh, empty bucket of its own for each test."""
    return s3gw.create_bucket(f"t-{secrets.token_hex(6)}")
