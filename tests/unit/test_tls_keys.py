"""Certificates of every key type are checked, in process (found by mypy: the key match
compared `public_numbers()`, which Ed25519 keys lack, so they raised AttributeError)."""

from __future__ import annotations

import datetime as dt

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from proxy.domains.tls import CertificateError, inspect

HOST = "images.vendor.example"


def _ed25519_cert(key: ed25519.Ed25519PrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_an_ed25519_certificate_is_checked() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = _ed25519_cert(key)
    assert inspect(cert, _pem(key), HOST).names == (HOST,)
    with pytest.raises(CertificateError, match="does not match"):
        inspect(cert, _pem(ed25519.Ed25519PrivateKey.generate()), HOST)


def test_keys_of_another_type_do_not_match() -> None:
    rsa = trustme.CA().issue_cert(HOST)
    with pytest.raises(CertificateError, match="does not match"):
        inspect(rsa.cert_chain_pems[0].bytes().decode(), _pem(ed25519.Ed25519PrivateKey.generate()), HOST)
