"""The cache of verified proxy tokens: a hit skips the JWT decode, never the expiry or the key."""

from __future__ import annotations

import time

import jwt
import pytest

from proxy.auth import tokens
from proxy.auth.tokens import Access, InvalidToken, TokenIssuer, VerifiedTokens
from proxy.secrets import Keyring

AUD = "proxy.example"
NAME = "proxy/app/up/repo"


def _issuer(ttl: int = 300, **kw: object) -> TokenIssuer:
    return TokenIssuer(Keyring.generate(), ttl, VerifiedTokens(**kw))  # type: ignore[arg-type]


def _token(issuer: TokenIssuer) -> str:
    return issuer.issue("cust-1", "app", AUD, [Access(NAME, ("pull",))])[0]


def test_second_verify_does_not_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = _issuer()
    token = _token(issuer)
    first = issuer.verify(token, AUD)
    calls = []
    real = jwt.decode
    monkeypatch.setattr(tokens.jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = issuer.verify(token, AUD)
    assert again == first and again.allows(NAME)
    assert calls == []
    assert len(issuer.verified) == 1


def test_cache_is_keyed_by_a_hash_not_the_token() -> None:
    issuer = _issuer()
    token = _token(issuer)
    issuer.verify(token, AUD)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in issuer.verified._data)
    assert token.encode() not in issuer.verified._data


def test_expiry_is_checked_on_every_hit() -> None:
    now = [time.time()]
    issuer = _issuer(ttl=60, clock=lambda: now[0])
    token = _token(issuer)
    issuer.verify(token, AUD)
    now[0] += 60 + tokens.LEEWAY + 1
    with pytest.raises(InvalidToken):
        issuer.verify(token, AUD)
    assert len(issuer.verified) == 0


def test_other_audience_is_verified_afresh_and_refused() -> None:
    issuer = _issuer()
    token = _token(issuer)
    issuer.verify(token, AUD)
    with pytest.raises(InvalidToken):
        issuer.verify(token, "evil.example")


def test_removed_signing_key_retires_cached_tokens() -> None:
    issuer = _issuer()
    token = _token(issuer)
    issuer.verify(token, AUD)
    old = issuer.keyring.current
    issuer.keyring.add_key()
    del issuer.keyring.keys[old]
    issuer.keyring._derived.clear()
    with pytest.raises(InvalidToken):
        issuer.verify(token, AUD)
    assert len(issuer.verified) == 0


def test_bad_tokens_are_not_cached() -> None:
    issuer = _issuer()
    token = _token(issuer)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(3):
        with pytest.raises(InvalidToken):
            issuer.verify(forged, AUD)
    assert len(issuer.verified) == 0


def test_bounded_least_recently_used() -> None:
    issuer = _issuer(max_entries=3)
    toks = [_token(issuer) for _ in range(4)]
    for t in toks[:3]:
        issuer.verify(t, AUD)
    issuer.verify(toks[0], AUD)  # most recent now
    issuer.verify(toks[3], AUD)  # evicts toks[1]
    keys = set(issuer.verified._data)
    assert len(keys) == 3
    assert VerifiedTokens.key(toks[1]) not in keys
    assert VerifiedTokens.key(toks[0]) in keys
