"""The portal's certificate state flags, without a browser (the portal end to end:
tests/integration/test_portal.py)."""

from __future__ import annotations

import datetime as dt

from proxy.admin.portal.views import cert_state


def test_certificate_flags():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert cert_state(None, now) == "none"
    assert cert_state({"notAfter": "2030-06-01T00:00:00+00:00", "expiringSoon": False}, now) == "ok"
    assert cert_state({"notAfter": "2030-01-10T00:00:00+00:00", "expiringSoon": True}, now) == "expiring"
    assert cert_state({"notAfter": "2029-12-31T00:00:00+00:00", "expiringSoon": True}, now) == "expired"
