"""Errors of the admin face's services: `{"message": ...}` with 400, 401, 404, 409 or 429.

Raised by the vendor service (proxy.admin.service) and the custom hostname
service (proxy.domains.service), answered by the vendor API and the portal; a
leaf, so the domain services need nothing of the admin face.

Messages are written here, never built from a secret: a validation problem
names the field, not its value.
"""

from __future__ import annotations


class VendorError(Exception):
    status = 400

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"message": self.message}
        if self.problems:
            out["errors"] = self.problems
        return out


class Invalid(VendorError):
    """400, listing every problem found (not only the first)."""

    status = 400

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid request: " + "; ".join(problems), problems)


class Unauthorized(VendorError):
    status = 401


class NotFound(VendorError):
    """404: unknown, or of another team (the two are indistinguishable on purpose)."""

    status = 404


class Conflict(VendorError):
    status = 409


class TooManyRequests(VendorError):
    """429, with Retry-After (seconds)."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after))}
