"""Providers that are plain Basic/Bearer registries with a known home:
Docker Hub, GitHub Container Registry, Quay, and any other OCI registry."""

from __future__ import annotations

from typing import Any

from proxy.upstream.providers.base import Provider

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


class Other(Provider):
    name = "other"


class KnownHost(Provider):
    """A provider that lives at fixed hostnames: the endpoint must be one of them."""

    hosts: frozenset[str] = frozenset()
    hint = ""

    def validate(self, endpoint: str, username: str | None, secret: str | None, options: dict[str, Any]) -> list[str]:
        problems = super().validate(endpoint, username, secret, options)
        if endpoint.lower() not in self.hosts:
            problems.append(f"endpoint: {self.hint}")
        return problems


class DockerHub(KnownHost):
    """`index.docker.io`, `docker.io` and `registry-1.docker.io` are one registry,
    reached at registry-1.docker.io; one-part names live under `library/`.
    The token realm (auth.docker.io) comes from the challenge."""

    name = "dockerhub"
    default_host = "registry-1.docker.io"
    hosts = DOCKER_HUB_HOSTS
    hint = "Docker Hub is docker.io (or index.docker.io, registry-1.docker.io)"

    def upstream_repo(self, rest: str) -> str:
        return rest if "/" in rest else f"library/{rest}"


class GHCR(KnownHost):
    """Username and a personal access token; realm ghcr.io/token. Wrong
    credentials get DENIED without a challenge, which the client maps to
    'the vendor's credentials were rejected'."""

    name = "ghcr"
    default_host = "ghcr.io"
    hosts = frozenset({"ghcr.io"})
    hint = "GitHub Container Registry is ghcr.io"


class Quay(KnownHost):
    """Username and password, or a robot account and its token; realm quay.io/v2/auth."""

    name = "quay"
    default_host = "quay.io"
    hosts = frozenset({"quay.io"})
    hint = "Quay is quay.io"
