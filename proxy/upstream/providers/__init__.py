"""One small module per kind of vendor registry; `provider_of` picks it."""

from __future__ import annotations

from proxy.store.models import Registry
from proxy.upstream.providers.base import CredentialContext, Provider, RegistryCredentials
from proxy.upstream.providers.ecr import ECR
from proxy.upstream.providers.google import GAR, GCR
from proxy.upstream.providers.simple import GHCR, DockerHub, Other, Quay

PROVIDERS: dict[str, Provider] = {p.name: p for p in (DockerHub(), ECR(), GCR, GAR, GHCR(), Quay(), Other())}


def provider_of(registry: Registry | str) -> Provider:
    name = registry if isinstance(registry, str) else registry.provider
    return PROVIDERS.get(name, PROVIDERS["other"])


__all__ = ["PROVIDERS", "CredentialContext", "Provider", "RegistryCredentials", "provider_of"]
