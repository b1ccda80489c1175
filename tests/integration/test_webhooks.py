"""Egress thresholds and the team webhook, end to end: a real pullgate, customers pulling
through it from a real registry, and a webhook receiver on loopback that checks every
signature. Once a month per customer, across a restart; retried when the receiver
fails; refused destinations are a 400 naming the rule."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.poll import apoll
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry
from tests.support.webhook_receiver import WebhookReceiver

OCI = "application/vnd.oci.image.manifest.v1+json"
SECRET = "whsec-" + secrets.token_hex(8)


class Env:
    def __init__(self, server: Pullgate, token: str, licenses: dict[str, str], upstream: Registry) -> None:
        self.server, self.token, self.licenses, self.upstream = server, token, licenses, upstream

    async def api(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s:
            url = f"{self.server.admin_url}/vendor/v3{path}"
            async with s.request(method, url, json=body, params=params, headers={"Authorization": self.token}) as r:
                data = await r.json() if r.status != 204 else None
                return r.status, data

    async def customer_id(self, name: str) -> str:
        _, body = await self.api("GET", "/customers")
        return str(next(c["id"] for c in body["customers"] if c["name"] == name))

    async def pull(self, customer: str, what: str = "manifest") -> int:
        """A manifest or its first blob, as `customer`; returns the bytes served."""
        img = self.upstream.images["oci"]
        auth = "Basic " + base64.b64encode(f"LICENSE_ID:{self.licenses[customer]}".encode()).decode()
        base = "/v2/proxy/hook-app/up/vendor/oci"
        path = f"{base}/manifests/v1" if what == "manifest" else f"{base}/blobs/{img.blobs[0][0]}"
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.get(self.server.url + path, headers={"Authorization": auth, "Accept": OCI}) as r:
                body = await r.read()
                assert r.status == 200, body
                return len(body)

    async def month_bytes(self, cid: str) -> int:
        _, body = await self.api("GET", f"/customer/{cid}/egress")
        return int(body["egress"]["bytes"])


def _server(workdir: Path, upstream: Registry, licenses: dict[str, str], token: str) -> Pullgate:
    teams = [
        {
            "name": "hooks",
            "api_tokens": [{"token_env": "WH_TOKEN"}],
            "apps": [{"slug": "hook-app"}],
            "registries": [
                {
                    "slug": "up",
                    "provider": "other",
                    "endpoint": "registry.hooks.test",
                    "url": upstream.url,
                    "insecure": True,
                    "username": upstream.username,
                    "password_env": "WH_UP_PW",
                }
            ],
            "customers": [
                {"name": name, "app": "hook-app", "license_id_env": f"WH_LIC_{i}"} for i, name in enumerate(licenses)
            ],
        }
    ]
    env = {"WH_TOKEN": token, "WH_UP_PW": upstream.password or ""}
    env |= {f"WH_LIC_{i}": lic for i, lic in enumerate(licenses.values())}
    return Pullgate(
        workdir,
        teams,
        env=env,
        settings={
            "pulllog": {"flush_seconds": 0.05},
            "webhooks": {"backoff_seconds": 0.2, "max_attempts": 4, "timeout_seconds": 5},
        },
        name="pullgate-webhooks",
    )


@pytest.fixture
def hooks_env(tmp_path: Path, upstream_basic: Registry) -> Iterator[Env]:
    licenses = {name: f"lic-{name}-" + secrets.token_hex(12) for name in ("first", "second", "third")}
    token = "pgt_hooks_" + secrets.token_hex(16)
    server = _server(tmp_path, upstream_basic, licenses, token).start()
    try:
        yield Env(server, token, licenses, upstream_basic)
    finally:
        server.stop()
    log = server.log_text()
    assert SECRET not in log and all(lic not in log for lic in licenses.values())


async def test_threshold_sends_one_signed_notification_a_month_across_a_restart(hooks_env: Env):
    env = hooks_env
    receiver = WebhookReceiver(SECRET)
    try:
        status, body = await env.api("PUT", "/team/webhook", {"url": receiver.url, "secret": SECRET})
        assert status == 200 and body["webhook"] == {
            "url": receiver.url,
            "secretSet": True,
            "updatedAt": body["webhook"]["updatedAt"],
        }
        assert SECRET not in str(await env.api("GET", "/team/webhook"))
        first, second = await env.customer_id("first"), await env.customer_id("second")
        manifest = len(env.upstream.images["oci"].manifest)
        # Crossed by the blob after the manifest, not by the manifest alone.
        for cid in (first, second):
            status, c = await env.api("PATCH", f"/customer/{cid}", {"egressThresholdBytes": manifest + 1})
            assert status == 200 and c["customer"]["egressThresholdBytes"] == manifest + 1

        await env.pull("first")
        await apoll(lambda: _at_least(env, first, manifest), 10, "the manifest in the rollup")
        _, state = await env.api("GET", f"/customer/{first}/egress")
        assert state["egress"]["reached"] is False and state["egress"]["notification"] is None
        blob = await env.pull("first", "blob")
        await apoll(lambda: len(receiver.accepted()) == 1, 15, "the threshold notification")
        got = receiver.accepted()[0]
        assert got.valid, "the signature must be the HMAC-SHA256 of the body under the secret"
        month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
        assert got.event == {
            "event": "egress.threshold_reached",
            "customerId": first,
            "appSlug": "hook-app",
            "month": month,
            "bytes": manifest + blob,
            "thresholdBytes": manifest + 1,
        }
        _, state = await env.api("GET", f"/customer/{first}/egress")
        assert state["egress"]["reached"] is True
        assert state["egress"]["notification"]["state"] == "delivered"

        # More pulls this month, then a restart: never a second notification for `first`.
        await env.pull("first", "blob")
        env.server.stop()
        env.server.start()
        await env.pull("first")
        await env.pull("second")
        await env.pull("second", "blob")  # `second` crosses now: its notification proves the batches were seen
        await apoll(lambda: len(receiver.accepted()) == 2, 15, "the second customer's notification")
        events = [r.event for r in receiver.all()]
        assert [e["customerId"] for e in events] == [first, second]
        assert all(r.valid for r in receiver.all())
        assert await env.month_bytes(first) == 2 * manifest + 2 * blob
        status, body = await env.api("GET", "/team/webhook/deliveries")
        assert status == 200
        assert [(d["customerId"], d["attempt"], d["status"], d["ok"]) for d in body["deliveries"]] == [
            (second, 1, 204, True),
            (first, 1, 204, True),
        ]
    finally:
        receiver.stop()


async def _at_least(env: Env, cid: str, n: int) -> bool:
    return await env.month_bytes(cid) >= n


async def test_a_failing_receiver_is_retried_with_backoff_and_each_attempt_recorded(hooks_env: Env):
    env = hooks_env
    receiver = WebhookReceiver(SECRET, fail_first=2)
    try:
        assert (await env.api("PUT", "/team/webhook", {"url": receiver.url, "secret": SECRET}))[0] == 200
        third = await env.customer_id("third")
        assert (await env.api("PATCH", f"/customer/{third}", {"egressThresholdBytes": 1}))[0] == 200
        await env.pull("third")
        await apoll(lambda: len(receiver.accepted()) == 1, 20, "delivery after two failures")
        tries = receiver.all()
        assert [r.status for r in tries] == [503, 503, 204]
        assert all(r.valid for r in tries) and len({r.body for r in tries}) == 1  # the same signed body
        _, body = await env.api("GET", "/team/webhook/deliveries", customer=third)
        attempts = sorted(body["deliveries"], key=lambda d: d["attempt"])
        assert [(d["attempt"], d["status"], d["ok"]) for d in attempts] == [
            (1, 503, False),
            (2, 503, False),
            (3, 204, True),
        ]
        assert attempts[0]["error"] == "answered 503"
        times = [dt.datetime.fromisoformat(d["time"]) for d in attempts]
        assert times[1] - times[0] >= dt.timedelta(seconds=0.2) and times[2] - times[1] >= dt.timedelta(seconds=0.4)
    finally:
        receiver.stop()


async def test_webhook_urls_pass_the_egress_policy_and_secrets_stay_hidden(hooks_env: Env):
    env = hooks_env
    admin_port = env.server.admin_port
    for url, rule in (
        ("http://10.20.30.40/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        (f"http://127.0.0.1:{admin_port}/vendor/v3/apps", "own-listener"),  # even with 127.0.0.0/8 allowed
    ):
        status, body = await env.api("PUT", "/team/webhook", {"url": url, "secret": SECRET})
        assert status == 400, body
        assert f"rule {rule}" in body["errors"][0] and body["errors"][0].startswith("url:")
    status, body = await env.api("PUT", "/team/webhook", {"url": "ftp://x", "nope": 1})
    assert status == 400 and len(body["errors"]) == 2
    assert (await env.api("GET", "/team/webhook"))[1] == {"webhook": None}
    assert (await env.api("DELETE", "/team/webhook"))[0] == 404
    receiver = WebhookReceiver(SECRET)
    try:
        assert (await env.api("PUT", "/team/webhook", {"url": receiver.url, "secret": SECRET}))[0] == 200
        # Moving the webhook without the secret again would send the old secret's signatures elsewhere.
        status, body = await env.api("PUT", "/team/webhook", {"url": receiver.url + "/other"})
        assert status == 400 and body["errors"][0].startswith("secret:")
        status, body = await env.api("PUT", "/team/webhook", {"url": receiver.url + "/other", "secret": None})
        assert status == 200 and body["webhook"]["secretSet"] is False
        assert (await env.api("DELETE", "/team/webhook"))[0] == 204
        assert (await env.api("GET", "/team/webhook"))[1] == {"webhook": None}
    finally:
        receiver.stop()
