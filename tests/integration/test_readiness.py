"""/readyz tells the truth: 503 with a reason while the store cannot be reached, 200 again after."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support.poll import apoll
from tests.support.postgres import PostgresCluster
from tests.support.pullgate import Pullgate


async def _ready(server: Pullgate) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(server.admin_url + "/readyz") as r:
        return r.status, await r.json()


async def test_readyz_fails_while_postgresql_is_stopped(cluster: PostgresCluster, workdir: Path):
    server = Pullgate(workdir, [], settings={"store": cluster.dsn()}).start()
    try:
        assert await _ready(server) == (200, {"store": True, "keyring": True})
        cluster.pause()
        try:

            async def failing() -> tuple[int, dict] | None:
                got = await _ready(server)
                return got if got[0] == 503 else None

            _, body = await apoll(failing, 20, "/readyz failing with the database down", interval=0.2)
            assert body["store"] is False and body["keyring"] is True
            assert "store" in body["reason"]
            # Still alive: a liveness probe must not restart a process that waits for its database.
            async with aiohttp.ClientSession() as s, s.get(server.admin_url + "/healthz") as r:
                assert r.status == 200
        finally:
            cluster.resume()

        async def ready_again() -> bool:
            return (await _ready(server))[0] == 200

        await apoll(ready_again, 30, "/readyz ready again once the database is back", interval=0.2)
    finally:
        server.stop()
