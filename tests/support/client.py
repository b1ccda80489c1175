"""A small HTTP client for tests that checks every answer for leaked secrets."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from tests.support.deployment import Deployment


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return self.json()["errors"][0]["code"]


def basic(license_id: str, user: str = "LICENSE_ID") -> str:
    return "Basic " + base64.b64encode(f"{user}:{license_id}".encode()).decode()


class ProxyClient:
    def __init__(self, dep: Deployment) -> None:
        self.dep = dep

    async def request(self, method: str, path: str, **kw: Any) -> Answer:
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            # encoded=True: send the path exactly as written (no dot-segment clean-up).
            url = URL(self.dep.url + path, encoded=True)
            async with s.request(method, url, allow_redirects=False, **kw) as r:
                body = await r.read()
                ans = Answer(r.status, r.headers, body)
        self.dep.assert_clean(body, f"the body of {method} {path}")
        self.dep.assert_clean("\n".join(f"{k}: {v}" for k, v in ans.headers.items()), f"headers of {method} {path}")
        return ans

    async def token(self, license_id: str, scope: str) -> str:
        ans = await self.request(
            "GET",
            "/v2/token",
            params={"service": self.dep.host, "scope": scope},
            headers={"Authorization": basic(license_id)},
        )
        assert ans.status == 200, ans.body
        return ans.json()["token"]
