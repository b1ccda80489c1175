"""Encryption at rest: AES-256-GCM under a master keyring with key ids.

A sealed value reads `v1:<key id>:<base64(nonce || ciphertext+tag)>`; the
associated data binds it to its owner (a registry's id, a customer's id), so a
ciphertext copied onto another row does not decrypt. The keyring file is YAML,
mode 0600: `{current: <id>, keys: {<id>: <base64 32 bytes>}}`. Rotation adds a
key and makes it current; old keys stay until removed, so old rows stay readable.
The same keyring also derives the HMAC keys that sign the proxy's own tokens.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import secrets as pysecrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("pullgate.secrets")

_PREFIX = "v1"


class SecretError(Exception):
    """A sealed value cannot be opened; the message names the key id, never data."""


@dataclass
class Keyring:
    current: str
    keys: dict[str, bytes] = field(default_factory=dict)
    path: Path | None = None
    mtime_ns: int = 0
    _derived: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, path: Path | None = None) -> Keyring:
        kid = _new_kid()
        return cls(current=kid, keys={kid: AESGCM.generate_key(bit_length=256)}, path=path)

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        if path.exists():
            return cls.load(path)
        ring = cls.generate(path)
        ring.save()
        log.warning("created a new master keyring at %s (mode 0600); back it up", path)
        return ring

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SecretError(f"keyring {path}: cannot read: {exc.__class__.__name__}") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys") or {}, dict):
            raise SecretError(f"keyring {path}: not a mapping of current and keys")
        keys: dict[str, bytes] = {}
        for kid, b64 in (data.get("keys") or {}).items():
            try:
                raw = base64.b64decode(b64, validate=True)
            except (ValueError, TypeError):
                raise SecretError(f"keyring {path}: key {kid} is not base64") from None
            if len(raw) != 32:
                raise SecretError(f"keyring {path}: key {kid} is not 32 bytes")
            keys[str(kid)] = raw
        current = str(data.get("current", ""))
        if current not in keys:
            raise SecretError(f"keyring {path}: current key {current!r} is not in keys")
        return cls(current=current, keys=keys, path=path, mtime_ns=path.stat().st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Pick up `pullgate keys rotate` run beside a live server (blocking: call in a thread)."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return False
        if mtime == self.mtime_ns:
            return False
        fresh = Keyring.load(self.path)
        # Swap whole objects: readers on the event loop never see a half-updated ring.
        self.keys, self.current, self.mtime_ns = fresh.keys, fresh.current, fresh.mtime_ns
        self._derived = {}
        log.info("master keyring reloaded; current key %s", self.current)
        return True

    def save(self) -> None:
        """Write atomically with mode 0600 (never a moment with wider permissions)."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = yaml.safe_dump(
            {
                "current": self.current,
                "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
            },
            sort_keys=True,
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self.mtime_ns = self.path.stat().st_mtime_ns

    def add_key(self) -> str:
        kid = _new_kid()
        while kid in self.keys:
            kid = _new_kid()
        self.keys[kid] = AESGCM.generate_key(bit_length=256)
        self.current = kid
        return kid

    def seal(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(self.keys[self.current]).encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{_PREFIX}:{self.current}:{base64.b64encode(nonce + ct).decode()}"

    def open(self, sealed: str, aad: str) -> str:
        try:
            prefix, kid, b64 = sealed.split(":", 2)
        except ValueError:
            raise SecretError("sealed value is malformed") from None
        if prefix != _PREFIX:
            raise SecretError(f"sealed value has unknown format {prefix!r}")
        key = self._key(kid)
        if key is None:
            raise SecretError(f"master key {kid!r} is not in the keyring")
        try:
            blob = base64.b64decode(b64, validate=True)
            return AESGCM(key).decrypt(blob[:12], blob[12:], aad.encode()).decode()
        except (InvalidTag, ValueError):
            raise SecretError(f"sealed value does not open under key {kid!r}") from None

    def _key(self, kid: str) -> bytes | None:
        key = self.keys.get(kid)
        if key is None and self.path is not None:
            # `pullgate keys rotate` saves the new key before it reseals any row, so a row
            # sealed under a key we do not know means the file changed: read it now rather
            # than at the next poll (a small file, read once per rotation).
            self.reload_if_changed()
            key = self.keys.get(kid)
        return key

    def key_id_of(self, sealed: str) -> str:
        return sealed.split(":", 2)[1]

    def signing_key(self, kid: str | None = None) -> tuple[str, bytes]:
        """An HMAC key for the proxy's JWTs, derived per master key (HKDF)."""
        kid = kid or self.current
        if kid not in self._derived:
            master = self._key(kid)
            if master is None:
                raise SecretError(f"master key {kid!r} is not in the keyring")
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pullgate jwt v1")
            self._derived[kid] = hkdf.derive(master)
        return kid, self._derived[kid]


def _new_kid() -> str:
    return dt.datetime.now(dt.UTC).strftime("k%Y%m%d") + "-" + pysecrets.token_hex(3)
