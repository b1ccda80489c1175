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
    teams = [
        {
            "name": "tls",
            "apps": [{"slug": "tls"}],
            "registries": [
                {"slug": "up", "provider": "other", "endpoint": "up.test", "url": upstream_anon.url, "insecure": True}
            ],
            "customers": [{"name": "C", "app": "tls", "license_id_env": "TLS_LICENSE"}],
        }
    ]
    settings = {
        "proxy": {"tls_cert_file": str(cert_file), "tls_key_file": str(key_file), "trusted_proxies": ["127.0.0.1/32"]}
    }
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
            f"docker://127.0.0.1:{server.port}/proxy/tls/up/{img.repo}:{img.tag}",
            tmp_path / "out",
            creds=f"LICENSE_ID:{LICENSE}",
            tls_verify=True,
            extra_args=["--src-cert-dir", str(certs)],
        )
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out" / "manifest.json").read_bytes() == img.manifest
    finally:
        server.stop()


def test_keep_alive_over_tls(tmp_path: Path, upstream_anon: Registry):
    import socket

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "c.crt")
    leaf.private_key_pem.write_to_path(tmp_path / "c.key")
    settings = {"proxy": {"tls_cert_file": str(tmp_path / "c.crt"), "tls_key_file": str(tmp_path / "c.key")}}
    server = Pullgate(tmp_path / "srv", [], settings=settings).start()
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                answers = []
                for _ in range(3):  # three requests, one TLS connection
                    tls.sendall(f"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += tls.recv(4096)
                    header, _, rest = head.partition(b"\r\n\r\n")
                    length = int(
                        next(h.split(b":")[1] for h in header.split(b"\r\n") if h.lower().startswith(b"content-length"))
                    )
                    while len(rest) < length:
                        rest += tls.recv(4096)
                    answers.append(header.split(b"\r\n")[0])
                    assert b"connection: close" not in header.lower()
        assert answers == [b"HTTP/1.1 401 Unauthorized"] * 3
    finally:
        server.stop()
