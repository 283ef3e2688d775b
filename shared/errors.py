"""The one error the service layer raises: a request the rules refuse, with the status that says why."""

from __future__ import annotations


class Rejected(Exception):
    """Refused by a rule (404 unknown, 409 conflicting state, 422 not acceptable); the HTTP layer answers it."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after  # seconds: the answer may change, so ask again (HTTP Retry-After)
