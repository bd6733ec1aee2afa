"""Domain errors, raised by the store and the services and mapped to HTTP problems in one place."""

from __future__ import annotations


class GroklabError(Exception):
    status_code = 400
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        # HTTP headers the answer must carry, e.g. WWW-Authenticate or Retry-After.
        self.headers = headers or {}


class NotFound(GroklabError):
    status_code = 404
    title = "Not found"


class Conflict(GroklabError):
    status_code = 409
    title = "Conflict"


class InvalidInput(GroklabError):
    status_code = 422
    title = "Invalid input"


class ServiceUnavailable(GroklabError):
    status_code = 503
    title = "Service unavailable"


class Unauthorized(GroklabError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(GroklabError):
    status_code = 403
    title = "Forbidden"


class TooManyRequests(GroklabError):
    status_code = 429
    title = "Too many requests"
