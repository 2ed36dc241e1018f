# The gateway's fast path: a bodiless request answered whole, by callbacks.
#
# Theory of operation
# -------------------
# Most requests through a gateway are small GETs on plain routes whose
# answer arrives in one read. The general path serves each in the client
# connection's task: the request event wakes the task, the handler's
# coroutines send the head, the task sleeps on the upstream connection's
# Inbox and wakes again for the answer — two task switches and a dozen
# coroutine frames per request, most of a request's CPU in this engine.
#
# The fast path does the same work from the protocols' callbacks:
#
#   1. `Http1Protocol.data_received` (server.py) offers a lone bodiless
#      request, read whole while the connection is idle, to
#      `Gateway.start`, which takes it only for a plain route (one
#      backend, no decision that varies, no rate limit, no circuit
#      breaking; retries are fine). It picks an endpoint and, with an idle
#      pooled connection to it, works out the first attempt's terms as the
#      general path does (budget deposit and reservation, retried statuses,
#      timeout), writes the request head and arms `FastExchange` as the
#      connection's `relay`. Without one, the stream is resumed on the
#      general path, which connects to that same endpoint.
#   2. `UpstreamConnection.data_received` (upstream.py) hands the relay the
#      events of each read. When they are a whole answer (head, body, end)
#      the relay writes the client's response in one write, reports to the
#      balancer, the outlier detector, the retry budget, the statistics and
#      the telemetry, returns the connection to its pool and settles the
#      stream, which lets the client connection read its next request. A
#      whole answer the route retries is dropped unseen instead: the
#      connection goes back to its pool and the next attempts run as in 3.
#   3. Anything else — an answer split over reads, a large or streamed
#      body, a timeout, a closed connection, a broken response — falls back:
#      the events go to the connection's Inbox as usual, and the stream is
#      resumed in the client connection's task with `FastExchange.resume`,
#      the general path's code from the point the head was sent (the same
#      errors, 502/504 answers, stale-connection retry, further attempts
#      and accounting).
#
# Invariants
# ----------
# - A request the fast path declines (`start` returns False) is untouched:
#   nothing was picked, taken from a pool, counted or sent.
# - Exactly one of `settle` and `resume` is called per request started.
#   A resumed exchange whose client connection's task has ended is still
#   finished, in a task of its own (server.py `finish_orphan`), so its
#   upstream connection goes back to the pool and it is accounted for.
# - The client connection reads nothing while a fast exchange is in flight
#   (server.py holds what arrived and pauses reading), so pipelined requests
#   are answered in order.
# - The request's telemetry is held by the exchange, never made current:
#   callbacks of interleaved requests share the loop's context.
from __future__ import annotations

import functools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from crossway.balance import Call
from crossway.proxy.forward import RetriableStatus, begin_bodiless, finish_bodiless
from crossway.proxy.headers import Headers, forward_response
from crossway.proxy.http1 import Body
from crossway.proxy.http1_wire import EndOfResponse, Framing, ResponseEvent, ResponseReceived
from crossway.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from crossway.proxy.clusters import Cluster
    from crossway.proxy.gateway import Gateway, _Outcome, _Retries, _Step
    from crossway.proxy.server import Http1Stream

log = logging.getLogger(__name__)


class FastExchange:
    """One request on the fast path, from its head sent to its answer."""

    __slots__ = (
        "call",
        "cluster",
        "conn",
        "gateway",
        "outcome",
        "plan",
        "retries",
        "reused",
        "step",
        "stream",
    )

    def __init__(
        self,
        gateway: Gateway,
        stream: Http1Stream,
        conn: UpstreamConnection,
        cluster: Cluster,
        call: Call,
        outcome: _Outcome,
        retries: _Retries,
        step: _Step,
    ) -> None:
        self.gateway = gateway
        self.stream = stream
        self.conn = conn
        self.cluster = cluster
        self.call = call
        self.outcome = outcome
        self.retries = retries
        self.step = step  # the first attempt's terms: endpoint, edits, timeout, ...
        self.reused = conn.exchanges > 0

    def send(self, max_body: int | None, idle_timeout: float) -> None:
        """Write the request head upstream and wait for the answer by callback."""
        step = self.step
        self.plan = begin_bodiless(
            self.stream,
            self.conn,
            policy=self.gateway.options.policy,
            timeout=step.timeout,
            idle_timeout=idle_timeout,
            target=self.retries.target,
            extra_headers=step.edits.extra,
            drop_headers=step.edits.drop,
            max_body=max_body,
        )
        self.conn.relay = self  # the answer cannot arrive before this returns

    def __call__(self, events: list[ResponseEvent]) -> bool:
        """`UpstreamConnection.relay`: True when `events` were taken."""
        conn = self.conn
        if not events and not conn.closed:
            return True  # part of a head: wait for the next read
        conn.relay = None
        count = len(events)
        if (
            1 < count < 4
            and type(events[0]) is ResponseReceived
            and type(events[-1]) is EndOfResponse
            and (count == 2 or type(events[1]) is Body)
        ):
            head = events[0].head
            if head.status in self.step.statuses:
                self._retry(head.status)
                return True
            body = events[1].data if count == 3 else b""  # type: ignore[union-attr]
            try:
                self._answer(head.status, head.headers, body, head.framing, head.content_length)
            except Exception:  # a bug here must not leave the client waiting
                log.exception("relaying an upstream answer failed")
                self._abandon()
            return True
        self.stream.resume(self.resume)
        return False

    def _answer(
        self, status: int, headers: Headers, body: bytes, framing: Framing, length: int | None
    ) -> None:
        gateway = self.gateway
        stream = self.stream
        conn = self.conn
        conn.disarm_timeout()
        no_body = framing is Framing.NONE
        headers = forward_response(headers, b"1.1", self.plan.policy)
        if not no_body:
            length = len(body)  # whole: chunked or not, it leaves with a length
        stream.respond(status, headers, body, length=length, no_body=no_body)
        outcome = self.outcome
        outcome.status = status
        gateway.answered(self.cluster, self.step.endpoint, self.call, outcome, status)
        gateway.answered_whole(self.retries, self.step, status)
        gateway.pool.release(conn)
        gateway.account(stream, outcome)
        stream.settle()

    def _retry(self, status: int) -> None:
        # The answer was read whole and is dropped unseen: the connection
        # goes back to its pool, the next attempts run on the general path.
        self.conn.disarm_timeout()
        self.gateway.pool.release(self.conn)
        self.stream.resume(functools.partial(self._dropped, status))

    def _abandon(self) -> None:
        self.conn.close()
        self.gateway.pool.release(self.conn)
        self.call.end(ok=False)
        self.stream.abort()
        self.outcome.status = 502
        self.gateway.account(self.stream, self.outcome)
        self.stream.settle()

    def resume(self) -> Coroutine[None, None, None]:
        """The rest of the exchange on the general path, in the client
        connection's task (see the module header, step 3)."""
        exchange = finish_bodiless(
            self.stream, self.conn, self.gateway.pool, self.plan, reused=self.reused
        )
        return self._going_on(exchange)

    def _dropped(self, status: int) -> Coroutine[None, None, None]:
        return self._going_on(_raise(RetriableStatus(status)))

    def _going_on(self, exchange: Coroutine[None, None, int]) -> Coroutine[None, None, None]:
        """The first attempt ending with `exchange`, then the route's others."""
        gateway = self.gateway
        step = self.step
        first = gateway.settle(self.cluster, step.endpoint, self.call, self.outcome, exchange)
        return gateway.resume_attempts(self.stream, self.outcome, self.retries, step, first)


async def _raise(error: Exception) -> int:
    raise error
