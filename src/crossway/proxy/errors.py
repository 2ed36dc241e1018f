# The responses the gateway itself answers when it cannot forward a request.
#
# Theory of operation
# -------------------
# Every local answer is a `GatewayError`: a `CrosswayError` with a stable
# `code`, an HTTP `status` and, for the 503s, a `reason` the client and the
# operator can act on (`X-Crossway-Reason`: which limit or health state
# refused the request). The body is the platform's error shape,
# `{"error": {"code", "message"}}`, so a client handles gateway answers and
# control-plane answers alike.
#
# Invariants
# ----------
# - `render` never fails and always yields a complete response with a
#   Content-Length, so the engine can write it on any connection state.
# - Responses to a malformed request carry `connection: close`: after a
#   framing error nothing else on that connection can be trusted.
from __future__ import annotations

from typing import ClassVar

import msgspec

from crossway.core.errors import CrosswayError
from crossway.proxy.http1 import Headers, Rejected
from crossway.proxy.http1_wire import Framing, encode_head, status_line

REASON_HEADER = b"x-crossway-reason"
OVERLOADED_HEADER = b"x-crossway-overloaded"


class GatewayError(CrosswayError):
    """A request the gateway answers itself; `reason` goes in `X-Crossway-Reason`."""

    code: ClassVar[str] = "gateway_error"
    status: ClassVar[int] = 502
    reason: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    """More response headers (Retry-After, X-Crossway-Overloaded)."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        if headers:
            self.headers = headers


class NoRoute(GatewayError):
    code = "no_route"
    status = 404


class UpstreamConnectFailed(GatewayError):
    code = "upstream_connect_failed"
    status = 502


class UpstreamProtocolError(GatewayError):
    code = "upstream_protocol_error"
    status = 502


class UpstreamReset(GatewayError):
    code = "upstream_reset"
    status = 502


class NoHealthyUpstream(GatewayError):
    code = "no_healthy_upstream"
    status = 503


class Overloaded(GatewayError):
    """A circuit-breaking limit (connections, pending, requests) or open breaker;
    the reason also goes in `X-Crossway-Overloaded` (Envoy's x-envoy-overloaded)."""

    code = "overloaded"
    status = 503

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        headers = ((OVERLOADED_HEADER, reason.encode()),) if reason else ()
        super().__init__(message, reason=reason, headers=headers)


class UpstreamTimeout(GatewayError):
    code = "upstream_timeout"
    status = 504


def render(error: GatewayError, *, close: bool = False) -> bytes:
    """The complete HTTP/1.1 response for `error`."""
    headers: Headers = [(b"content-type", b"application/json")]
    if error.reason:
        headers.append((REASON_HEADER, error.reason.encode()))
    if error.headers:
        headers.extend(error.headers)
    return _response(error.status, headers, msgspec.json.encode(error.to_json()), close)


def render_rejected(rejected: Rejected) -> bytes:
    """The response to a request the parser refused; always closes."""
    body = {"error": {"code": rejected.code, "message": rejected.detail}}
    headers: Headers = [(b"content-type", b"application/json")]
    return _response(rejected.status, headers, msgspec.json.encode(body), True)


def _response(status: int, headers: Headers, body: bytes, close: bool) -> bytes:
    if close:
        headers.append((b"connection", b"close"))
    return encode_head(status_line(status), headers, Framing.LENGTH, len(body)) + body
