"""KOTS `License` files: verify the signature, read the customer out of them.

A KOTS license is YAML (`apiVersion: kots.io/v1beta1` or `v1beta2`, `kind:
License`). `spec.signature` is base64 of an outer JSON
`{"licenseData": b64, "innerSignature": b64}`; `innerSignature` is base64 of
`{"licenseSignature": b64, "publicKey": PEM, "keySignature": b64}`.
`licenseSignature` is RSA-PSS (salt length: as long as fits, verified with
"auto") over the `licenseData` bytes, with MD5 for v1beta1 and SHA-256 for
v1beta2, MGF1 on the same hash.

Trust: the signature must verify under the public key the vendor configured
for the app in pullgate. The key embedded in the file (`publicKey`, itself
signed by Replicated's global key in KOTS) is not trusted here: a file could
carry any key. The fields used are the signed ones (from `licenseData`); the
readable copy outside the signature must agree with them, so an edit to
either copy is refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "kots.io/v1beta1": hashes.MD5,
    "kots.io/v1beta2": hashes.SHA256,
}
MAX_LICENSE_BYTES = 1024 * 1024


class LicenseError(ValueError):
    """Why a license file is refused. Never carries the license ID."""


@dataclass(frozen=True)
class KotsLicense:
    api_version: str
    license_id: str
    app_slug: str
    customer_name: str
    customer_email: str | None
    license_type: str
    expires_at: str | None  # ISO 8601, or None for no expiry


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise LicenseError("the public key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise LicenseError("the public key is not an RSA key")
    return key


def read(text: str | bytes) -> dict[str, Any]:
    """The outer document, checked for kind and version (not yet verified)."""
    if len(text) > MAX_LICENSE_BYTES:
        raise LicenseError("the license file is too large")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise LicenseError("the license file is not YAML") from None
    if not isinstance(doc, dict) or doc.get("kind") != "License":
        raise LicenseError("not a KOTS License (kind: License)")
    if doc.get("apiVersion") not in HASHES:
        raise LicenseError(f"apiVersion must be one of {', '.join(HASHES)}")
    if not isinstance(doc.get("spec"), dict):
        raise LicenseError("the license has no spec")
    return doc


def app_slug(doc: dict[str, Any]) -> str:
    slug = doc["spec"].get("appSlug")
    if not isinstance(slug, str) or not slug:
        raise LicenseError("spec.appSlug is missing")
    return slug


def verify(doc: dict[str, Any], public_key_pem: str) -> KotsLicense:
    """Check the signature under the app's key; return the signed license."""
    key = load_public_key(public_key_pem)
    version = doc["apiVersion"]
    try:
        outer = json.loads(_b64(doc["spec"].get("signature")))
        data = _b64(outer["licenseData"])
        inner = json.loads(_b64(outer["innerSignature"]))
        signature = _b64(inner["licenseSignature"])
    except (KeyError, TypeError, ValueError):
        raise LicenseError("spec.signature is missing or malformed") from None
    algorithm = HASHES[version]()
    try:
        key.verify(signature, data, padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO), algorithm)
    except InvalidSignature:
        raise LicenseError("the license signature does not verify under this app's public key") from None
    try:
        signed = yaml.safe_load(data)
    except yaml.YAMLError:
        raise LicenseError("the signed license data is not readable") from None
    if not isinstance(signed, dict) or not isinstance(signed.get("spec"), dict):
        raise LicenseError("the signed license data has no spec")
    if signed.get("apiVersion") != version:
        raise LicenseError("apiVersion differs from the signed license")
    lic = _fields(signed["spec"], version)
    readable = _fields(doc["spec"], version, signed=False)
    changed = [_SPEC_NAMES[k] for k, v in vars(readable).items() if vars(lic)[k] != v]
    if changed:
        # Names the fields, never their values (one of them may be the license ID).
        raise LicenseError(f"the license was altered: {', '.join(changed)} differ from the signed data")
    return lic


_SPEC_NAMES = {
    "api_version": "apiVersion",
    "license_id": "licenseID",
    "app_slug": "appSlug",
    "customer_name": "customerName",
    "customer_email": "customerEmail",
    "license_type": "licenseType",
    "expires_at": "entitlements.expires_at",
}


def _fields(spec: dict[str, Any], version: str, signed: bool = True) -> KotsLicense:
    where = "signed " if signed else ""

    def text(key: str, required: bool) -> str | None:
        value = spec.get(key)
        if value is None or value == "":
            if required:
                raise LicenseError(f"{where}spec.{key} is missing")
            return None
        if not isinstance(value, str):
            raise LicenseError(f"{where}spec.{key} must be a string")
        return value

    expires = None
    ent = spec.get("entitlements") or {}
    if isinstance(ent, dict) and isinstance(ent.get("expires_at"), dict):
        raw = ent["expires_at"].get("value")
        if raw not in (None, ""):
            expires = _iso(raw, f"{where}spec.entitlements.expires_at")
    return KotsLicense(
        api_version=version,
        license_id=text("licenseID", True) or "",
        app_slug=text("appSlug", True) or "",
        customer_name=text("customerName", True) or "",
        customer_email=text("customerEmail", False),
        license_type=text("licenseType", False) or "prod",
        expires_at=expires,
    )


def _iso(value: Any, where: str) -> str:
    if isinstance(value, dt.datetime):
        t = value
    else:
        try:
            t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise LicenseError(f"{where} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not a string")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
