"""Portal session cookies without a browser: sealing, tampering, expiry, purposes,
logout, and the cookie attributes (Secure over TLS)."""

from __future__ import annotations

import ssl
import time

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.admin.portal.session import Sessions, same_token, token_hash
from proxy.admin.portal.views import _set_cookie
from proxy.secrets import Keyring


def test_session_round_trip_and_refusals():
    ring = Keyring.generate()
    sessions = Sessions(ring)
    s, cookie = sessions.new("team-1", "pgt_secret_token")
    assert "pgt_secret_token" not in cookie and token_hash("pgt_secret_token") not in cookie  # sealed, not signed only
    back = sessions.read(cookie)
    assert back == s and back.token_hash == token_hash("pgt_secret_token")
    kid, _, blob = cookie.partition(".")
    flipped = blob[:-2] + ("A" if blob[-2] != "A" else "B") + blob[-1]
    assert sessions.read(f"{kid}.{flipped}") is None
    assert sessions.read("") is None and sessions.read("nonsense") is None
    # A login or flash cookie is not a session, even though sealed under the same key.
    _, login_cookie = sessions.new_login()
    assert sessions.read(login_cookie) is None
    assert Sessions(Keyring.generate()).read(cookie) is None  # another keyring
    sessions.end(s)
    assert sessions.read(cookie) is None


def test_sessions_survive_key_rotation_and_expire():
    ring = Keyring.generate()
    sessions = Sessions(ring)
    _, cookie = sessions.new("team-1", "tok")
    ring.add_key()
    assert sessions.read(cookie) is not None  # old key still in the ring
    expired = sessions.sealer.seal(
        {"sid": "x", "tid": "t", "th": "h", "csrf": "c", "exp": int(time.time()) - 1}, "session"
    )
    assert sessions.read(expired) is None


def test_csrf_comparison():
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd") and not same_token(None, "abc") and not same_token("", "")


def test_cookie_attributes_plain_and_tls():
    for ctx, secure in ((None, False), (ssl.create_default_context(), True)):
        request = make_mocked_request("GET", "/portal/login", sslcontext=ctx)
        resp = web.Response()
        _set_cookie(request, resp, "pullgate_session", "v", 60)
        morsel = resp.cookies["pullgate_session"]
        assert morsel["httponly"] is True and morsel["samesite"] == "Strict" and morsel["path"] == "/portal"
        assert bool(morsel["secure"]) is secure
