"""Apply the config's `bootstrap:` section: create or update, never delete.

Runs at every start, so it must be idempotent: the same file twice leaves the
store as one application of it would.
"""

from __future__ import annotations

import logging
from pathlib import Path

from proxy.config import Config, ConfigError, RegistrySpec, read_secret, registry_fields
from proxy.secrets import Keyring
from proxy.store.base import Store, new_id
from proxy.store.models import Registry

log = logging.getLogger("pullgate.bootstrap")


async def apply(cfg: Config, store: Store, keyring: Keyring) -> None:
    for t, team_spec in enumerate(cfg.bootstrap.teams):
        where = f"bootstrap.teams[{t}]"
        team = await store.ensure_team(team_spec.name)
        for k, tok in enumerate(team_spec.api_tokens):
            token = read_secret(f"{where}.api_tokens[{k}].token", tok.token_file, tok.token_env, base_dir=cfg.base_dir)
            if token:
                await store.ensure_api_token(team.id, token, tok.name)
        apps = {}
        for app_spec in team_spec.apps:
            try:
                apps[app_spec.slug] = await store.ensure_app(team.id, app_spec.slug, app_spec.name)
            except ValueError as exc:
                raise ConfigError(f"{where}.apps: {exc}") from None
        for r, spec in enumerate(team_spec.registries):
            await store.put_registry(
                await _registry(store, keyring, team.id, spec, apps, f"{where}.registries[{r}]", cfg.base_dir)
            )
        for c, cust in enumerate(team_spec.customers):
            key = f"{where}.customers[{c}].license_id"
            license_id = read_secret(key, cust.license_id_file, cust.license_id_env, base_dir=cfg.base_dir)
            if not license_id or len(license_id) < 16:
                raise ConfigError(f"{key}: a license ID must be at least 16 characters")
            await store.put_customer(
                team_id=team.id,
                app_id=apps[cust.app].id,
                name=cust.name,
                email=cust.email,
                license_id=license_id,
                seal=lambda value, cid: keyring.seal(value, f"customer:{cid}"),
                license_type=cust.license_type,
                expires_at=cust.expires_at,
            )
    if cfg.bootstrap.teams:
        log.info("bootstrap applied: %d team(s)", len(cfg.bootstrap.teams))


async def _registry(
    store: Store, keyring: Keyring, team_id: str, spec: RegistrySpec, apps: dict, where: str, base_dir: Path
) -> Registry:
    slug = spec.slug or spec.endpoint
    rid = await store.registry_id(team_id, slug) or new_id()
    # The provider's declared keys: which is the username, the secret, an option.
    provider, username, secret, options = registry_fields(spec, where, base_dir)
    url = spec.url or provider.default_url(spec.endpoint)
    problems = provider.validate(spec.endpoint, username, secret, options)
    if problems:
        raise ConfigError("; ".join(f"{where}.{p}" for p in problems))
    return Registry(
        id=rid,
        team_id=team_id,
        slug=slug,
        provider=spec.provider,
        endpoint=spec.endpoint,
        url=url.rstrip("/"),
        insecure=spec.insecure,
        username=username,
        secret_sealed=keyring.seal(secret, rid) if secret else None,
        allow_anonymous=spec.allow_anonymous,
        anonymous_repositories=tuple(spec.anonymous_repositories),
        options=options,
        app_ids=tuple(sorted(apps[a].id for a in spec.apps)),
    )
