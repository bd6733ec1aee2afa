"""What the client could not do, as exceptions whose message is meant for a person.

Their own module, below the HTTP client, so that what builds on the client (`groklab reproduce`)
can raise and catch them without importing the client back.
"""

from __future__ import annotations


class ClientError(Exception):
    """Anything the client could not do; the message is meant for a person."""


class ServerUnreachable(ClientError):
    """No api answers at the client's URL (and it never did, or the outage outlasted retry_seconds)."""


class Unauthorized(ClientError):
    """401 or 403: the key is missing, unknown, revoked, or lacks the scope."""


class ApiError(ClientError):
    """The api refused a request: `status` is the HTTP status, `detail` the problem's detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ServiceUnavailable(ApiError):
    """503: the api's database or broker is down (an outage the client waits out)."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(status, detail)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"the api answers 503: {self.detail}"
