"""Providers that are plain Basic/Bearer registries with a known home:
Docker Hub, GitHub Container Registry, Quay, and any other OCI registry."""

from __future__ import annotations

from typing import Any

from proxy.upstream.providers.base import Provider

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class Other(Provider):
    name = "other"


class DockerHub(Provider):
    """`index.docker.io`, `docker.io` and `registry-1.docker.io` are one registry,
    reached at registry-1.docker.io; one-part names live under `library/`.
    The token realm (auth.docker.io) comes from the challenge."""

    name = "dockerhub"
    default_host = "registry-1.docker.io"

    def upstream_repo(self, rest: str) -> str:
        return rest if "/" in rest else f"library/{rest}"

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        problems = super().validate(endpoint, username, secret, options)
        if endpoint.lower() not in DOCKER_HUB_HOSTS:
            problems.append("endpoint: Docker Hub is docker.io (or index.docker.io, registry-1.docker.io)")
        return problems


class GHCR(Provider):
    """Username and a personal access token; realm ghcr.io/token. Wrong
    credentials get DENIED without a challenge, which the client maps to
    'the vendor's credentials were rejected'."""

    name = "ghcr"
    default_host = "ghcr.io"

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        problems = super().validate(endpoint, username, secret, options)
        if endpoint.lower() != "ghcr.io":
            problems.append("endpoint: GitHub Container Registry is ghcr.io")
        return problems


class Quay(Provider):
    """Username and password, or a robot account and its token; realm quay.io/v2/auth."""

    name = "quay"
    default_host = "quay.io"

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        problems = super().validate(endpoint, username, secret, options)
        if endpoint.lower() != "quay.io":
            problems.append("endpoint: Quay is quay.io")
        return problems
