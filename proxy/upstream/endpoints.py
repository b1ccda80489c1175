"""How a registry's endpoint is compared: Docker Hub answers to several host names."""

from __future__ import annotations

from proxy.upstream.providers.simple import DOCKER_HUB_HOSTS


def canonical_endpoint(host: str) -> str:
    host = host.lower().rstrip("/")
    return "docker.io" if host in DOCKER_HUB_HOSTS else host
