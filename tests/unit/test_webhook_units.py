"""The threshold webhook's body and signature, as a receiver checks them."""

from __future__ import annotations

import hashlib
import hmac
import json

from proxy.admin import webhooks


def test_body_is_the_documented_event_and_the_signature_is_its_hmac():
    body = webhooks.payload("cust1", "app1", "2026-12", 1234, 1000)
    assert json.loads(body) == {
        "event": "egress.threshold_reached",
        "customerId": "cust1",
        "appSlug": "app1",
        "month": "2026-12",
        "bytes": 1234,
        "thresholdBytes": 1000,
    }
    sig = webhooks.signature("s3cret", body)
    assert sig == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert webhooks.signature("other", body) != sig
