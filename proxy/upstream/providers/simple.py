"""Providers that are plain Basic/Bearer registries with a known home:
Docker Hub, GitHub Container Registry, Quay, and any other OCI registry.
Their fields: `username` and `password` (base.BASIC_FIELDS)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from proxy.upstream.providers.base import BASIC_FIELDS, Field, Provider

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def labelled(username: str, password: str, password_hint: str = "") -> tuple[Field, ...]:
    """The basic fields, as the portal names them for one provider (asked for there; anonymous is allowed)."""
    user, secret = BASIC_FIELDS
    return (
        replace(user, label=username, form_required=True),
        replace(secret, label=password, form_required=True, hint=password_hint),
    )


class Other(Provider):
    name = "other"
    fields = (
        replace(BASIC_FIELDS[0], hint="Leave username and password empty for anonymous access."),
        BASIC_FIELDS[1],
    )


class KnownHost(Provider):
    """A provider that lives at fixed hostnames: the endpoint must be one of them."""

    hosts: frozenset[str] = frozenset()
    hint = ""
    url_forms = ("rotate",)
    endpoint_placeholder = None

    def endpoint_problem(self, endpoint: str, options: Mapping[str, Any]) -> str | None:
        return None if endpoint in self.hosts else self.hint


class DockerHub(KnownHost):
    """`index.docker.io`, `docker.io` and `registry-1.docker.io` are one registry,
    reached at registry-1.docker.io; one-part names live under `library/`.
    The token realm (auth.docker.io) comes from the challenge."""

    name = "dockerhub"
    title = "DockerHub"
    default_host = "registry-1.docker.io"
    default_endpoint = "docker.io"
    hosts = DOCKER_HUB_HOSTS
    hint = "Docker Hub is docker.io (or index.docker.io, registry-1.docker.io)"
    fields = labelled("Username", "Password or access token")

    def upstream_repo(self, rest: str) -> str:
        return rest if "/" in rest else f"library/{rest}"


class GHCR(KnownHost):
    """Username and a personal access token; realm ghcr.io/token. Wrong
    credentials get DENIED without a challenge, which the client maps to
    'the vendor's credentials were rejected'."""

    name = "ghcr"
    title = "GHCR"
    default_host = "ghcr.io"
    default_endpoint = "ghcr.io"
    hosts = frozenset({"ghcr.io"})
    hint = "GitHub Container Registry is ghcr.io"
    fields = labelled("GitHub username", "Personal access token", "Needs read:packages.")


class Quay(KnownHost):
    """Username and password, or a robot account and its token; realm quay.io/v2/auth."""

    name = "quay"
    title = "Quay"
    default_host = "quay.io"
    default_endpoint = "quay.io"
    hosts = frozenset({"quay.io"})
    hint = "Quay is quay.io"
    fields = labelled("Username or robot account", "Password or robot token")
