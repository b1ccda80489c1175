"""The realm follows the scheme the client used: https on a TLS listener, and
X-Forwarded-Proto/-Host only from proxies the config trusts."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import trustme

from tests.support import skopeo
from tests.support.pullgate import Pullgate
from tests.support.registry import Registry

LICENSE = "lic-tls-0123456789abcdef0123"


async def test_tls_listener_and_trusted_forwarding(tmp_path: Path, upstream_anon: Registry):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    teams = [{
        "name": "tls", "apps": [{"slug": "tls"}],
        "registries": [{"slug": "up", "provider": "other", "endpoint": "up.test", "url": upstream_anon.url,
                        "insecure": True}],
        "customers": [{"name": "C", "app": "tls", "license_id_env": "TLS_LICENSE"}],
    }]  # fmt: skip
    settings = {"proxy": {"tls_cert_file": str(cert_file), "tls_key_file": str(key_file),
                          "trusted_proxies": ["127.0.0.1/32"]}}  # fmt: skip
    server = Pullgate(tmp_path / "srv", teams, env={"TLS_LICENSE": LICENSE}, settings=settings).start()
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        base = f"https://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/v2/", ssl=ctx) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith(
                    f'Bearer realm="https://127.0.0.1:{server.port}/v2/token"'
                )
            fwd = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "images.vendor.example"}
            async with s.get(f"{base}/v2/", ssl=ctx, headers=fwd) as r:
                assert 'realm="http://images.vendor.example/v2/token"' in r.headers["WWW-Authenticate"]
        certs = tmp_path / "certs"
        certs.mkdir()
        ca.cert_pem.write_to_path(certs / "ca.crt")
        img = upstream_anon.images["oci"]
        res = skopeo.copy(
            f"docker://127.0.0.1:{server.port}/proxy/tls/up/{img.repo}:{img.tag}", tmp_path / "out",
            creds=f"LICENSE_ID:{LICENSE}", tls_verify=True, extra_args=["--src-cert-dir", str(certs)],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out" / "manifest.json").read_bytes() == img.manifest
    finally:
        server.stop()
