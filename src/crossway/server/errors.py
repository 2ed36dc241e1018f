"""The error boundary: every failure leaves the server as `{"error": {"code", "message"}}`.

Theory of operation
- Starlette raises `HTTPException` for routing failures (404 unknown path,
  405 wrong method). `http_exception_response` renders them in our shape; the
  app installs it as Starlette's handler for `HTTPException`.
- `ErrorBoundary` is a pure ASGI middleware around everything else. It turns
  a `CrosswayError` into its JSON and status, and any other exception into a
  500 `internal` whose message says nothing about the code; the traceback goes
  to the server log only.
- A failure after the response has started cannot change the status any more;
  the boundary logs it and returns, and uvicorn closes the connection so the
  client sees a truncated response rather than a wrong one.

Invariant: no traceback, exception repr or file path ever reaches a client.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossway.core.errors import CrosswayError
from crossway.server.http import error_body, error_response, json_response

log = logging.getLogger("crossway.server")

INTERNAL_MESSAGE = "internal error; the server log has the details"


def http_exception_response(scope: Scope, exc: HTTPException) -> Response:
    """A Starlette `HTTPException` in the JSON error shape, keeping its headers
    (`Allow` on a 405)."""
    method, path = scope.get("method", "GET"), scope.get("path", "/")
    if exc.status_code == 404:
        body = error_body("not_found", f"nothing is served at {path}")
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        body = error_body("method_not_allowed", f"{method} is not allowed on {path}; use {allowed}")
    else:
        body = error_body(_code_for(exc.status_code), _message_for(exc))
    return json_response(body, exc.status_code, headers=exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler (registered for `HTTPException`)."""
    assert isinstance(exc, HTTPException)
    return http_exception_response(request.scope, exc)


def response_for(scope: Scope, exc: Exception) -> Response:
    """The response a client gets for `exc`; logs what the client must not see."""
    if isinstance(exc, CrosswayError):
        if exc.status >= 500:
            log.warning("request failed: %s", exc.message, extra={"code": exc.code})
        return error_response(exc)
    if isinstance(exc, HTTPException):
        return http_exception_response(scope, exc)
    log.error(
        "unhandled error in %s %s",
        scope.get("method"),
        scope.get("path"),
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return json_response(error_body("internal", INTERNAL_MESSAGE), 500)


class ErrorBoundary:
    """Pure ASGI middleware; see the module header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            if started:
                _log_abandoned(scope, exc)
                return
            await response_for(scope, exc)(scope, receive, send)


def _log_abandoned(scope: Scope, exc: Exception) -> None:
    log.error(
        "response abandoned after it started: %s %s",
        scope.get("method"),
        scope.get("path"),
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def _code_for(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def _message_for(exc: HTTPException) -> str:
    detail = exc.detail if isinstance(exc.detail, str) else ""
    return detail or _code_for(exc.status_code).replace("_", " ")
