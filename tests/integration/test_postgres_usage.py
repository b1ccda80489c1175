"""Egress reporting on PostgreSQL: the store scenarios of tests/unit/test_usage_store.py
on a real server, and two `pullgate serve` replicas sharing it, both seeing a customer
cross its threshold, sending one notification between them."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from proxy.store import open_store
from proxy.store.base import Store
from tests.integration.test_postgres import fresh_db
from tests.support import usage_scenarios as scenarios
from tests.support.poll import apoll
from tests.support.postgres import PostgresCluster
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry
from tests.support.webhook_receiver import WebhookReceiver

OCI = "application/vnd.oci.image.manifest.v1+json"


@pytest_asyncio.fixture
async def pg_store(cluster: PostgresCluster) -> AsyncIterator[Store]:
    store = await open_store(await fresh_db(cluster), Path("."))
    yield store
    await store.close()


async def test_rollup_on_postgres(pg_store: Store):
    await scenarios.rollup_sums_batches_and_scopes_teams(pg_store)


async def test_one_notification_per_month_on_postgres(pg_store: Store):
    await scenarios.one_notification_per_customer_and_month(pg_store)


async def test_pull_log_pages_on_postgres(pg_store: Store):
    await scenarios.pull_log_pages_cover_every_row_once(pg_store)


@pytest.fixture
def two_replicas(
    cluster: PostgresCluster, upstream_basic: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Pullgate], str, str]]:
    dsn = asyncio.run(fresh_db(cluster))
    token = "pgt_eg_" + secrets.token_hex(16)
    license_id = "lic-eg-" + secrets.token_hex(16)
    keys = tmp_path_factory.mktemp("eg-keys") / "keys.yaml"
    env = {"EG_TOKEN": token, "EG_PW": upstream_basic.password or "", "EG_LIC": license_id}
    teams = [
        {
            "name": "metered",
            "api_tokens": [{"token_env": "EG_TOKEN"}],
            "apps": [{"slug": "eg-app"}],
            "registries": [
                {
                    "slug": "up",
                    "provider": "other",
                    "endpoint": "registry.eg.test",
                    "url": upstream_basic.url,
                    "insecure": True,
                    "username": upstream_basic.username,
                    "password_env": "EG_PW",
                }
            ],
            "customers": [{"name": "Heavy", "app": "eg-app", "license_id_env": "EG_LIC"}],
        }
    ]
    settings: dict[str, Any] = {
        "store": dsn,
        "keys": {"file": str(keys)},
        "pulllog": {"flush_seconds": 0.05},
        "webhooks": {"backoff_seconds": 0.2},
    }
    servers: list[Pullgate] = []
    try:
        for name in ("eg-a", "eg-b"):
            servers.append(
                Pullgate(tmp_path_factory.mktemp(name), teams, env=env, settings=settings, name=name).start()
            )
        yield servers, token, license_id
    finally:
        for s in servers:
            s.stop()


async def test_two_replicas_send_one_notification(two_replicas: tuple[list[Pullgate], str, str]):
    servers, token, license_id = two_replicas
    receiver = WebhookReceiver("pg-secret")
    admin = servers[0].admin_url + "/vendor/v3"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": token}) as api:
            async with api.put(f"{admin}/team/webhook", json={"url": receiver.url, "secret": "pg-secret"}) as r:
                assert r.status == 200
            async with api.get(f"{admin}/customers") as r:
                cid = (await r.json())["customers"][0]["id"]
            async with api.patch(f"{admin}/customer/{cid}", json={"egressThresholdBytes": 1}) as r:
                assert r.status == 200
            auth = "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()

            async def pull(server: Pullgate) -> int:
                async with aiohttp.ClientSession() as s:
                    url = server.url + "/v2/proxy/eg-app/up/vendor/oci/manifests/v1"
                    async with s.get(url, headers={"Authorization": auth, "Accept": OCI}) as resp:
                        assert resp.status == 200
                        return len(await resp.read())

            # Both replicas log pulls of the crossing customer at the same time.
            sizes = await asyncio.gather(*(pull(servers[i % 2]) for i in range(20)))

            async def all_rolled_up() -> bool:
                async with api.get(f"{admin}/customer/{cid}/egress") as resp:
                    return bool((await resp.json())["egress"]["bytes"] == sum(sizes))

            await apoll(all_rolled_up, 15, "every pull in the rollup")
            await apoll(lambda: len(receiver.accepted()) >= 1, 15, "the notification")
            async with api.get(f"{admin}/team/webhook/deliveries") as r:
                deliveries = (await r.json())["deliveries"]
        assert len(receiver.all()) == 1 and receiver.all()[0].valid
        assert [(d["customerId"], d["ok"]) for d in deliveries] == [(cid, True)]
    finally:
        receiver.stop()
