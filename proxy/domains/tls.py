"""TLS on the proxy listener: a default certificate from the config, and one
per verified hostname, chosen by SNI. Keys arrive as PEM (API, CLI, portal)
and are stored sealed like registry secrets; `ssl` only loads from files, so
each pair is written to a private temporary directory, loaded, and removed."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


class CertificateError(ValueError):
    """A PEM pair that cannot serve a hostname; the message never quotes the key."""


@dataclass(frozen=True)
class CertInfo:
    not_after: dt.datetime
    names: tuple[str, ...]


def inspect(cert_pem: str, key_pem: str, hostname: str | None = None) -> CertInfo:
    """Parse and check a certificate and its key (they match; it covers hostname)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise CertificateError("certificate: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CertificateError("key: not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError("key: does not match the certificate")
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if hostname is not None and not any(_covers(n, hostname) for n in names):
        raise CertificateError(f"certificate: does not name {hostname}")
    return CertInfo(not_after=cert.not_valid_after_utc, names=tuple(names))


def _covers(pattern: str, hostname: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == hostname


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """Blocking (writes files): call in a thread."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="pullgate-tls-") as d:
        os.chmod(d, 0o700)
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        for path, body in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class SNIContexts:
    """The listener's context; its SNI callback swaps in a hostname's own context."""

    def __init__(self, default: ssl.SSLContext) -> None:
        self.default = default
        self.by_host: dict[str, ssl.SSLContext] = {}
        default.sni_callback = self._pick

    def _pick(self, sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name:
            chosen = self.by_host.get(server_name.lower())
            if chosen is not None:
                sock.context = chosen

    def replace(self, contexts: dict[str, ssl.SSLContext]) -> None:
        self.by_host = contexts  # one assignment: the callback sees old or new, never half
