"""Errors that cross layers.

Every error a user can meet has a stable machine `code` and an HTTP `status`, so
the API turns any of them into `{"error": {"code", "message"}}` without a table
of special cases, and nothing ever reaches a user as a traceback.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CrosswayError(Exception):
    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body.update(self.details)
        return {"error": body}


class InvalidArgument(CrosswayError):
    code = "invalid_argument"
    status = 400


class Unauthorized(CrosswayError):
    code = "unauthorized"
    status = 401


class NotFound(CrosswayError):
    code = "not_found"
    status = 404


class Conflict(CrosswayError):
    code = "conflict"
    status = 409


class PreconditionFailed(CrosswayError):
    code = "precondition_failed"
    status = 412


class Unavailable(CrosswayError):
    code = "unavailable"
    status = 503
