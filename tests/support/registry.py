"""A real docker-registry (distribution 2.8) on 127.0.0.1: auth none, htpasswd or token."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tests.support.procs import ManagedProcess, free_port, wait_http
from tests.support.token_server import TokenServer

if TYPE_CHECKING:
    from tests.support.images import PushedImage

AuthMode = Literal["none", "htpasswd", "token"]
REGISTRY_BIN = "/usr/bin/docker-registry"


class Registry:
    """`docker-registry serve` on a free loopback port, storage in a temp dir.

    auth="htpasswd": Basic with `username`/`password`.
    auth="token": Bearer via a TokenServer (started here unless `token_server` is given;
    then it is the caller's to stop) whose user is `username`/`password`.
    """

    def __init__(
        self,
        auth: AuthMode = "none",
        *,
        username: str = "vendor",
        password: str | None = None,
        token_server: TokenServer | None = None,
        service: str = "pullgate-test-registry",
        issuer: str = "pullgate-test-issuer",
        workdir: Path | None = None,
        name: str = "registry",
    ) -> None:
        self.auth: AuthMode = auth
        self.name = name
        self.username: str | None = None if auth == "none" else username
        self.password: str | None = None
        if auth != "none":
            self.password = password or f"canary-{name}-pw-{secrets.token_hex(8)}"
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"pullgate-{name}-"))
        self.images: dict[str, PushedImage] = {}  # filled by seed_standard_images
        self.token_server: TokenServer | None = None
        self._own_token_server = False
        self.proc: ManagedProcess | None = None
        try:
            self._start(token_server, service, issuer)
        except BaseException:
            self.stop()
            raise

    def _start(self, token_server: TokenServer | None, service: str, issuer: str) -> None:
        auth_cfg: dict[str, Any] = {}
        if self.auth == "htpasswd":
            htpasswd = self.dir / "htpasswd"
            line = subprocess.run(
                ["htpasswd", "-Bbn", self.username, self.password],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            htpasswd.write_text(line + "\n")
            auth_cfg = {"htpasswd": {"realm": "pullgate-test", "path": str(htpasswd)}}
        elif self.auth == "token":
            if token_server is None:
                assert self.username and self.password
                token_server = TokenServer(
                    {self.username: self.password},
                    service=service,
                    issuer=issuer,
                    cert_path=self.dir / "token-signer.pem",
                )
                self._own_token_server = True
            self.token_server = token_server
            auth_cfg = {
                "token": {
                    "realm": token_server.realm,
                    "service": token_server.service,
                    "issuer": token_server.issuer,
                    "rootcertbundle": str(token_server.cert_path),
                }
            }
        # A lost free_port() race shows as an early exit: retry on a fresh port.
        for attempt in range(3):
            self.port = free_port()
            config = {
                "version": "0.1",
                "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.dir / "data")},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                # No http.debug: that would open a second listener.
                "http": {"addr": f"127.0.0.1:{self.port}", "secret": secrets.token_hex(16)},
                "auth": auth_cfg or None,
            }
            if not auth_cfg:
                del config["auth"]
            cfg_path = self.dir / "config.yml"
            cfg_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
            # A clean environment: REGISTRY_* variables would override the file.
            env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir)}
            self.proc = ManagedProcess([REGISTRY_BIN, "serve", str(cfg_path)], self.dir, f"{self.name}-{attempt}", env)
            try:
                wait_http(self.url + "/v2/", 15, self.proc)
                return
            except RuntimeError:
                if "address already in use" not in self.proc.log_text() or attempt == 2:
                    raise
                self.proc.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def creds(self) -> str | None:
        """`user:pass` for skopeo, None without auth."""
        return None if self.username is None else f"{self.username}:{self.password}"

    def ref(self, repo: str, reference: str) -> str:
        """`docker://` reference for skopeo; `reference` is a tag or a sha256 digest."""
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"docker://{self.host}/{repo}{sep}{reference}"

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        if self.token_server is not None and self._own_token_server:
            self.token_server.stop()
            self._own_token_server = False
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
