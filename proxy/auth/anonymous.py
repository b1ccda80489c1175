"""Who an anonymous client is to the token endpoint and the pull routes, and how often it may come."""

from __future__ import annotations

import math

from proxy import metrics
from proxy.oci.errors import OCICode, OCIError
from proxy.ratelimit import RateLimiter

SUBJECT = "anonymous"  # the `sub` of anonymous tokens; no customer has this id


def throttle(limiter: RateLimiter, address: str) -> None:
    """Spend one of `address`'s anonymous requests; 429 TOOMANYREQUESTS with Retry-After when none is left."""
    wait = limiter.take(address)
    if wait is not None:
        metrics.ANONYMOUS_LIMITED.inc()
        retry = "3600" if math.isinf(wait) else str(max(1, math.ceil(wait)))
        raise OCIError(
            OCICode.TOOMANYREQUESTS, "too many anonymous requests from this address", headers={"Retry-After": retry}
        )
