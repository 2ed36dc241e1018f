# The gateway handler: route, decide, pick an endpoint, forward.
#
# Theory of operation
# -------------------
# `Gateway` is the `Handler` the protocol drivers call once per request. It
# reads the current `GatewayConfig` once at the start of the request — a
# configuration swap (`swap`) replaces one reference, so in-flight requests
# finish on the configuration they started with and nothing is dropped —
# then:
#
#   1. `config.table.match(...)`  -> 404 `no_route` when nothing matches;
#      the route's rate limit, if any (ratelimit.py) -> 429 `rate_limited`
#   2. `decide(...)` (routes/actions.py, pure) -> a local answer, a fault
#      delay, or a backend service and upstream path (skipped for a route
#      whose decision cannot vary: one backend, the request as sent)
#   3. the service's circuit breaking, if its call policy has any
#      (overload.py) -> 503 `upstream_overloaded` / `breaker_open`
#   4. `Clusters.pick(service, balancer)` -> 503 `no_healthy_upstream`
#   5. `forward(...)` within the route's deadline (its `timeout`, across all
#      attempts; each attempt also within `per_try_timeout`); connect
#      failures, resets and per-try timeouts (nothing reached the client
#      yet) are retried on another pick when the route's retries allow it:
#      every method for a connect failure (nothing was sent), idempotent
#      methods without a body for a reset, a per-try timeout and the
#      retriable statuses (5xx, gateway-error, listed codes), whose answer is
#      dropped unseen — except on the last attempt, or when the service's
#      retry budget has no retry to reserve: then the answer is relayed.
#   6. a route that mirrors sends a copy of a bodiless request to the shadow
#      service in the background (Host suffixed `-shadow`); its answer and
#      failures are dropped and never delay the client.
#
# Every failure the client can see is a JSON `GatewayError` (errors.py).
#
# Invariants
# ----------
# - One configuration per request, read once.
# - A request body is never replayed: a request with a body is retried only
#   after a connect failure, when no byte of it was read.
# - Each attempt is reported to the balancer (`begin`/`end`), so load-aware
#   balancers see failures and latency.
from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine
from contextvars import Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from crossway.balance import Call, Endpoint, Outcome
from crossway.core.clock import Clock, SystemClock
from crossway.proxy.admin import GatewayStats
from crossway.proxy.clusters import Cluster, Clusters
from crossway.proxy.errors import (
    GatewayError,
    NoHealthyUpstream,
    NoRoute,
    UpstreamConnectFailed,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    render,
    render_rejected,
)
from crossway.proxy.fastpath import FastExchange
from crossway.proxy.forward import DEFAULT_IDLE_TIMEOUT, RetriableStatus, forward
from crossway.proxy.headers import ForwardingPolicy, Headers, HeaderView
from crossway.proxy.http1 import RequestHead
from crossway.proxy.http1_wire import Framing, encode_head, status_line
from crossway.proxy.overload import RetryBudgets, RetryGate, ServiceGuards
from crossway.proxy.ratelimit import RateLimitExceeded, RateLimits, RouteLimit
from crossway.proxy.route_plan import (
    NO_STATUSES,
    Edits,
    RoutePlan,
    attempt_timeout,
    duration_seconds,
    may_retry,
    may_retry_status,
    plain_backend,
    response_edit,
    retried_statuses,
    route_edits,
)
from crossway.proxy.routes.actions import (
    LocalResponse,
    decide,
)
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import Route
from crossway.proxy.routes.table import CompiledRoute, Match
from crossway.proxy.shadow import ShadowStream, forget
from crossway.proxy.stream import ClientBodyError, Stream
from crossway.proxy.telemetry import GatewayTelemetry, RequestTelemetry
from crossway.proxy.upstream import UpstreamPool
from crossway.resilience.redis_limiter import AsyncScriptingClient
from crossway.telemetry.metrics import OTHER_METHOD

if TYPE_CHECKING:
    from crossway.proxy.server import Http1Stream

DEFAULT_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    policy: ForwardingPolicy = field(default_factory=ForwardingPolicy)
    default_timeout: float = DEFAULT_TIMEOUT
    default_idle_timeout: float = DEFAULT_IDLE_TIMEOUT


class Gateway:
    """Routes each request by the current configuration (see the module header)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clusters: Clusters,
        pool: UpstreamPool,
        options: GatewayOptions | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] = random.random,
        stats: GatewayStats | None = None,
        telemetry: GatewayTelemetry | None = None,
        redis: AsyncScriptingClient | None = None,
    ) -> None:
        self.stats = stats
        self.telemetry = telemetry
        self.config = config
        self.clusters = clusters
        self.pool = pool
        self.options = options or GatewayOptions()
        self._clock = clock or SystemClock()
        self._rng = rng
        self._shadows: set[asyncio.Task[int]] = set()
        self._plans: dict[CompiledRoute, RoutePlan] = {}
        # Per-service circuit breaking, retry budgets and route rate limits
        # (overload.py, ratelimit.py); state kept across configuration swaps.
        events = stats.service_event if stats is not None else None
        self.guards = ServiceGuards(clock=self._clock, events=events)
        self.budgets = RetryBudgets(clock=self._clock)
        failed = stats.limit_unavailable if stats is not None else None
        self.limits = RateLimits(clock=self._clock, redis=redis, failed=failed)
        self._adopt_policies(config)

    def swap(self, config: GatewayConfig) -> None:
        """Use `config` for requests that start from now on."""
        if config.policies != self.config.policies:
            self._adopt_policies(config)
        self.config = config

    def _adopt_policies(self, config: GatewayConfig) -> None:
        self.guards.update(config.policies)
        self.clusters.set_policies(config.policies)
        for cluster in self.clusters.all():  # caps lifted or changed take effect now
            most = cluster.max_connections or self.pool.limits.max_connections
            for endpoint in cluster.endpoints:
                self.pool.endpoint((endpoint.address, endpoint.port)).limit_connections(most)

    def __call__(
        self, stream: Stream, picked: tuple[str, Endpoint] | None = None
    ) -> Coroutine[None, None, None]:
        """Serve `stream`; `picked`: the endpoint of a service the first
        attempt goes to, when the fast path picked it already."""
        outcome = _Outcome(self._clock.now())
        outcome.picked = picked
        if self.telemetry is not None:
            # Current for the task's logging (trace ids in log lines).
            outcome.token = self.telemetry.begin(stream)
        return self.complete(stream, outcome, self._handle(stream, self.config, outcome))

    async def complete(
        self, stream: Stream, outcome: _Outcome, work: Coroutine[None, None, None]
    ) -> None:
        """Await `work`, answer what it raises, account for the request."""
        try:
            await work
        except GatewayError as error:
            outcome.status = error.status
            _answer_error(stream, error)
        except ClientBodyError as error:
            outcome.status = error.rejected.status
            if not stream.response_started:
                stream.send_local(render_rejected(error.rejected), close=True)
        finally:
            self.account(stream, outcome)

    def account(self, stream: Stream, outcome: _Outcome) -> None:
        """Statistics and telemetry for a request that is over."""
        # The last attempt's end, read once for the balancer, the outlier
        # detector and the statistics, when the answer was relayed.
        started = outcome.started
        ended = outcome.ended or self._clock.now()
        if self.stats is not None:
            method = _METHODS.get(stream.head.method, OTHER_METHOD)
            self.stats.observe(outcome.route, outcome.status, ended - started, method)
        telemetry = self.telemetry
        if telemetry is not None:
            route, status = outcome.route, outcome.status
            if outcome.token is not None:
                telemetry.finish(outcome.token, stream, route, status, started, ended)
            elif outcome.telemetry is not None:
                telemetry.finish_request(outcome.telemetry, stream, route, status, started, ended)

    def start(self, stream: Http1Stream) -> bool:
        """The fast path (fastpath.py, server.py `FastStarter`): send a
        bodiless request to a plain route's endpoint over an idle pooled
        connection and let the answer be relayed by callback. False, having
        done nothing, when the request needs anything more."""
        head = stream.head
        if head.has_body or head.expect_continue:
            return False
        try:
            found = self._lookup(head, self.config)
        except NoRoute:
            return False
        match, plan, path, query = found.match, found.plan, found.path, found.query
        backend = plan.plain
        if backend is None or plan.limit is not None:
            return False
        if plan.edits.needs_origin:
            return False
        service = backend.service
        if self.guards.get(service) is not None:
            return False
        route = match.route.route
        started = self._clock.now()
        endpoint = self.clusters.pick(service, route.balancer, None, started)
        if endpoint is None:
            return False
        address = (endpoint.address, endpoint.port)
        conn = self.pool.take_idle(address)
        if conn is None:
            # The general path connects, to this endpoint: a second pick
            # would skew round robin and the like.
            stream.resume(functools.partial(self, stream, (service, endpoint)))
            return True
        cluster = self.clusters.cluster(service)
        if cluster.max_connections is not None:
            self.pool.endpoint(address).limit_connections(cluster.max_connections)
        outcome = _Outcome(started)
        outcome.route = match.route.name
        if self.telemetry is not None:
            # Held by the request, not made current: callbacks of interleaved
            # requests share the loop's context.
            outcome.telemetry = self.telemetry.begin_request(stream)
        target = head.target
        if not query and target.endswith(b"?"):
            target = path.encode("latin-1")  # as a decided unchanged path is sent
        budget = deadline = None
        retriable = NO_STATUSES
        if plan.attempts > 1:  # as `_attempts` begins
            budget = plan.budgets.get(service)
            if budget is not None:
                budget.deposit()
            retriable = plan.retry_statuses if may_retry_status(stream, route) else NO_STATUSES
            deadline = started + plan.timeout
        # tuple.__new__: a NamedTuple's generated __new__ costs ~200 ns, per request here.
        retries = tuple.__new__(_Retries, (match, plan, service, target, deadline, retriable))
        step = self._step(retries, plan.edits, budget, endpoint, 0, outcome, started)
        call = cluster.balancer(route.balancer).begin(endpoint)
        exchange = FastExchange(self, stream, conn, cluster, call, outcome, retries, step)
        exchange.send(route.max_request_bytes, plan.idle_timeout)
        return True

    def resume_attempts(
        self,
        stream: Stream,
        outcome: _Outcome,
        retries: _Retries,
        step: _Step,
        first: Coroutine[None, None, int],
    ) -> Coroutine[None, None, None]:
        """The rest of a request the fast path began: its first attempt's
        `first` (`step` its terms), then the route's other attempts."""
        attempts = self._attempts(
            stream,
            retries.match,
            retries.plan,
            retries.service,
            retries.target,
            retries.deadline,
            outcome,
            (step, first),
        )
        return self.complete(stream, outcome, _record_status(attempts, outcome))

    def _lookup(self, head: RequestHead, config: GatewayConfig) -> _Lookup:
        """The request's route and its plan; raises `NoRoute`."""
        path, _, query = head.target.decode("latin-1").partition("?")
        # Decoded only when a predicate or an action looks a header up.
        headers = HeaderView(head.headers)
        host = head.host.decode("latin-1") if head.host else ""
        method = _METHODS.get(head.method) or head.method.decode("latin-1")
        match = config.table.match(method, path, host or None, headers, query)
        if match is None:
            raise NoRoute(f"no route for {method} {path}")
        plan = self._plans.get(match.route)
        if plan is None:
            plan = self._plan(match)
        found = (match, plan, method, host, path, query, headers)
        return tuple.__new__(_Lookup, found)  # tuple.__new__: see `start`

    async def _handle(self, stream: Stream, config: GatewayConfig, outcome: _Outcome) -> None:
        head = stream.head
        match, plan, method, host, path, query, headers = self._lookup(head, config)
        outcome.route = match.route.name
        if plan.limit is not None:
            await self._admit(plan.limit, stream)
        if plan.plain is not None:  # the decision is known: skip `decide`
            service = plan.plain.service
            target = head.target
            if not query and target.endswith(b"?"):
                target = path.encode("latin-1")  # as a decided unchanged path is sent
        else:
            service, target = await self._decide(
                stream, match, outcome, (method, host, path, query), headers
            )
            if not service:
                return  # answered locally
        _check_body_limit(stream, match.route.route)
        if self.guards.get(service) is None:  # no circuit breaking: one coroutine less
            outcome.status = await self._attempts(
                stream, match, plan, service, target, None, outcome
            )
        else:
            outcome.status = await self._forward(stream, match, plan, service, target, outcome)

    async def _decide(
        self,
        stream: Stream,
        match: Match,
        outcome: _Outcome,
        request: tuple[str, str, str, str],
        headers: HeaderView,
    ) -> tuple[str, bytes]:
        """The route's actions for this request (`request`: method, host,
        path, query): the service and target to forward to, or ("", b"")
        once answered locally."""
        head = stream.head
        method, host, path, query = request
        decision = decide(
            match.route.actions,
            match.captures,
            method=method,
            scheme=_SCHEMES.get(stream.peer.scheme) or stream.peer.scheme.decode(),
            host=host,
            path=path,
            query=query,
            headers=headers,
            rng=self._rng,
        )
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.local is not None:
            outcome.status = decision.local.status
            stream.send_local(_local(decision.local))
            return "", b""
        assert decision.backend is not None
        if decision.path is path and (query or not head.target.endswith(b"?")):
            target = head.target  # not rewritten: what the client sent, unchanged
        else:
            target = (decision.path + ("?" + query if query else "")).encode("latin-1")
        if decision.mirror is not None and not head.has_body:
            self._mirror(stream, decision.mirror, match.route.route, target)
        return decision.backend.service, target

    async def _admit(self, limit: RouteLimit, stream: Stream) -> None:
        try:
            await limit.admit(stream)
        except RateLimitExceeded:
            if self.stats is not None:
                self.stats.limited(limit.route)
            raise

    async def _forward(
        self,
        stream: Stream,
        match: Match,
        plan: RoutePlan,
        service: str,
        target: bytes,
        outcome: _Outcome,
    ) -> int:
        """Forward under the service's circuit breaking (overload.py), if any,
        within the route's overall deadline."""
        guard = self.guards.get(service)
        if guard is None:  # the deadline starts with the first attempt
            return await self._attempts(stream, match, plan, service, target, None, outcome)
        deadline = self._clock.now() + plan.timeout  # the wait for a slot counts
        started = await guard.enter(plan.timeout)
        failed: bool | None = None
        try:
            status = await self._attempts(stream, match, plan, service, target, deadline, outcome)
            failed = status in guard.fail_on
            return status
        except (UpstreamConnectFailed, UpstreamReset, UpstreamTimeout, UpstreamProtocolError):
            failed = True
            raise
        finally:
            guard.leave(started, failed)

    async def _attempts(
        self,
        stream: Stream,
        match: Match,
        plan: RoutePlan,
        service: str,
        target: bytes,
        deadline: float | None,
        outcome: _Outcome,
        first: tuple[_Step, Coroutine[None, None, int]] | None = None,
    ) -> int:
        """The route's attempts; `deadline` (clock time) None: `plan.timeout`
        from now (read from the clock only when there may be a second attempt).
        `first`: the first attempt's terms and exchange, begun by the fast
        path (which then also made the budget's deposit)."""
        route = match.route.route
        edits = plan.edits
        if edits.needs_origin:
            edits = edits._replace(response=response_edit(match.route.actions, stream))
        attempts = plan.attempts
        retriable = plan.retry_statuses if may_retry_status(stream, route) else frozenset()
        budget = None
        if attempts > 1:
            budget = plan.budgets.get(service)
            if budget is not None and first is None:
                budget.deposit()
            if deadline is None:
                deadline = self._clock.now() + plan.timeout
        retries = _Retries(match, plan, service, target, deadline, retriable)
        tried: set[str] = set()
        for attempt in range(attempts):
            if first is not None:
                step, exchange = first
                first = None
            else:
                picked = outcome.picked
                if picked is not None and picked[0] == service:
                    outcome.picked, endpoint = None, picked[1]
                else:  # the first pick reuses the request's start time for ejection expiry
                    endpoint = self._pick(service, route, tried, None if tried else outcome.started)
                step = self._step(retries, edits, budget, endpoint, attempt, outcome, None)
                exchange = self._attempt(
                    stream,
                    service,
                    endpoint,
                    route,
                    target,
                    step.edits,
                    step.statuses,
                    step.timeout,
                    outcome,
                )
            endpoint, edits, held = step.endpoint, step.edits, step.held
            final, spent, overall = step.final, step.spent, step.overall
            try:
                status = await exchange
            except RetriableStatus:
                tried.add(endpoint.id)
                if held is not None:
                    held.spend()
                    held = None
            except (UpstreamConnectFailed, UpstreamReset, UpstreamTimeout) as error:
                tried.add(endpoint.id)
                if final or not may_retry(stream, route, error):
                    raise
                if overall and isinstance(error, UpstreamTimeout):
                    raise  # the route's deadline has passed: no time for another try
                # A connect failure sent nothing, so its retry adds no work to
                # the upstream and does not draw on the budget (Finagle's
                # requeues); outlier ejection stops picking a dead endpoint.
                if isinstance(error, UpstreamConnectFailed):
                    pass
                elif held is not None:
                    held.spend()
                    held = None
                elif spent:
                    self._retry_refused(service)
                    raise
            else:
                if spent and status in retriable:
                    self._retry_refused(service)
                return status
            finally:
                if held is not None:
                    held.cancel()
            if self.stats is not None:
                self.stats.retried(match.route.name)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _step(
        self,
        retries: _Retries,
        edits: Edits,
        budget: RetryGate | None,
        endpoint: Endpoint,
        attempt: int,
        outcome: _Outcome,
        now: float | None,
    ) -> _Step:
        """The terms of one attempt to `endpoint` (`now`: the clock, if read)."""
        telemetry = self.telemetry
        if telemetry is not None:  # trace context and caller, upstream noted
            service = retries.service
            if outcome.telemetry is not None:  # held, not current: the fast path's
                request = outcome.telemetry
                extra, drop = telemetry.upstream_for(
                    request, edits.extra, edits.drop, service, endpoint
                )
            else:
                extra, drop = telemetry.upstream(edits.extra, edits.drop, service, endpoint)
            # tuple.__new__ rather than _replace: see `start`.
            edits = tuple.__new__(Edits, (extra, drop, edits.response, edits.needs_origin))
        plan = retries.plan
        # A retry is reserved before an answer could be dropped for it,
        # so a retry the budget refuses relays that answer instead.
        final = attempt + 1 >= plan.attempts
        held = budget if not final and budget is not None and budget.reserve() else None
        spent = not final and budget is not None and held is None
        statuses = NO_STATUSES if final or spent else retries.retriable
        deadline = retries.deadline
        if deadline is None:
            remaining = plan.timeout
        else:
            remaining = deadline - (self._clock.now() if now is None else now)
        timeout, overall = attempt_timeout(plan, remaining)
        # tuple.__new__: see `start`.
        return tuple.__new__(
            _Step, (endpoint, edits, held, spent, statuses, timeout, overall, final)
        )

    def answered_whole(self, retries: _Retries, step: _Step, status: int) -> None:
        """The fast path relayed `status` as the first attempt's answer."""
        if step.held is not None:
            step.held.cancel()
        elif step.spent and status in retries.retriable:
            self._retry_refused(retries.service)

    def _retry_refused(self, service: str) -> None:
        if self.stats is not None:
            self.stats.retry_refused(service)

    async def _attempt(
        self,
        stream: Stream,
        service: str,
        endpoint: Endpoint,
        route: Route,
        target: bytes,
        edits: Edits,
        retry_statuses: frozenset[int],
        timeout: float,
        outcome: _Outcome,
    ) -> int:
        outcome.ended = 0.0  # set again only if this attempt answers
        cluster = self.clusters.cluster(service)
        if cluster.max_connections is not None:  # endpoints discovered since the swap
            address = (endpoint.address, endpoint.port)
            self.pool.endpoint(address).limit_connections(cluster.max_connections)
        call = cluster.balancer(route.balancer).begin(endpoint)
        exchange = forward(
            stream,
            (endpoint.address, endpoint.port),
            pool=self.pool,
            policy=self.options.policy,
            timeout=timeout,
            idle_timeout=self._idle_timeout(route),
            target=target,
            extra_headers=edits.extra,
            drop_headers=edits.drop,
            edit_response=edits.response,
            max_body=route.max_request_bytes,
            upgrade=stream.head.upgrade is not None,
            retry_statuses=retry_statuses,
        )
        return await self.settle(cluster, endpoint, call, outcome, exchange)

    async def settle(
        self,
        cluster: Cluster,
        endpoint: Endpoint,
        call: Call,
        outcome: _Outcome,
        exchange: Coroutine[None, None, int],
    ) -> int:
        """Await an attempt's `exchange`; report its outcome to the balancer
        (`call`) and the outlier detector."""
        try:  # what a `with` block did, without its __enter__/__exit__ calls
            try:
                status = await exchange
            except (UpstreamConnectFailed, UpstreamReset, UpstreamTimeout):
                cluster.record(endpoint.id, Outcome.GATEWAY_ERROR)
                raise
            except RetriableStatus as retriable:
                cluster.record(endpoint.id, Outcome.from_status(retriable.status))
                call.end(ok=retriable.status < 500)
                raise
            self.answered(cluster, endpoint, call, outcome, status)
            return status
        except BaseException:
            call.end(ok=False)  # the time spent still counts as an observation
            raise

    def answered(
        self, cluster: Cluster, endpoint: Endpoint, call: Call, outcome: _Outcome, status: int
    ) -> None:
        """An attempt's answer was relayed: its end for everyone who keeps time."""
        ended = outcome.ended = self._clock.now()
        cluster.record(endpoint.id, Outcome.from_status(status), ended)
        call.end(ok=status < 500, now=ended)

    def _mirror(self, stream: Stream, service: str, route: Route, target: bytes) -> None:
        """Send a copy to the shadow service; its answer and failures are ignored."""
        endpoint = self.clusters.pick(service, route.balancer)
        if endpoint is None:
            return
        shadow = ShadowStream(stream)
        task = asyncio.get_running_loop().create_task(
            forward(
                shadow,
                (endpoint.address, endpoint.port),
                pool=self.pool,
                policy=self.options.policy,
                timeout=self._timeout(route),
                idle_timeout=self._idle_timeout(route),
                target=target,
            )
        )
        self._shadows.add(task)
        task.add_done_callback(forget(self._shadows))

    def _plan(self, match: Match) -> RoutePlan:
        """What forwarding needs of a route, folded once per compiled route."""
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()  # old configurations' routes; rebuilt on demand
        route = match.route.route
        per_try = route.retries.per_try_timeout
        plan = RoutePlan(
            edits=route_edits(match.route.actions),
            attempts=max(route.retries.attempts, 1),
            retry_statuses=retried_statuses(route),
            timeout=self._overall_timeout(route),
            per_try=duration_seconds(per_try) if per_try is not None else None,
            budgets=self._budgets(route),
            limit=self.limits.limit(match.route.name, route),
            plain=plain_backend(match.route.actions),
            idle_timeout=self._idle_timeout(route),
        )
        self._plans[match.route] = plan
        return plan

    def _pick(self, service: str, route: Route, tried: set[str], now: float | None) -> Endpoint:
        for _ in range(3):
            endpoint = self.clusters.pick(service, route.balancer, None, now)
            if endpoint is None:
                break
            if endpoint.id not in tried:
                return endpoint
        if endpoint is not None:
            return endpoint
        raise NoHealthyUpstream(f"no endpoint of {service} is available", reason="no_endpoints")

    def _overall_timeout(self, route: Route) -> float:
        """The route's deadline across all attempts (the gateway default without one)."""
        return (
            self.options.default_timeout
            if route.timeout is None
            else duration_seconds(route.timeout)
        )

    def _budgets(self, route: Route) -> dict[str, RetryGate]:
        """The retry budget of each service the route forwards to."""
        spec = route.retries.budget
        if spec is None or route.retries.attempts <= 1:
            return {}
        services = {b.service for b in route.backends}
        services.update(b.service for r in route.header_routes for b in r.backends)
        ttl = duration_seconds(spec.ttl)
        return {
            s: self.budgets.budget(
                s, percent=spec.percent, min_per_second=spec.min_per_second, ttl=ttl
            )
            for s in services
        }

    def _timeout(self, route: Route) -> float:
        """The wait for a response head: the per-try timeout when the route
        sets one, else the route's timeout, else the gateway default."""
        per_try = route.retries.per_try_timeout
        if per_try is not None:
            return duration_seconds(per_try)
        if route.timeout is None:
            return self.options.default_timeout
        return duration_seconds(route.timeout)

    def _idle_timeout(self, route: Route) -> float:
        """A silence that ends an exchange: the route's, else the gateway default."""
        idle = route.idle_timeout
        return self.options.default_idle_timeout if idle is None else duration_seconds(idle)


def _check_body_limit(stream: Stream, route: Route) -> None:
    limit = route.max_request_bytes
    length = stream.head.content_length
    if limit is not None and length is not None and length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")


class _Retries(NamedTuple):
    """What the attempts of a request the fast path began need to go on."""

    match: Match
    plan: RoutePlan
    service: str
    target: bytes
    deadline: float | None
    retriable: frozenset[int]
    """The statuses retried for this request (none: not idempotent, a body, ...)."""


class _Step(NamedTuple):
    """The terms of one attempt (`Gateway._step`)."""

    endpoint: Endpoint
    edits: Edits
    held: RetryGate | None
    """A retry reserved from the budget: spent if this attempt is retried."""
    spent: bool
    """The budget refused a retry: this attempt's answer is relayed, whatever it is."""
    statuses: frozenset[int]
    """Answers dropped for another attempt."""
    timeout: float
    overall: bool
    """`timeout` is what is left of the route's deadline: no retry after it."""
    final: bool


async def _record_status(attempts: Coroutine[None, None, int], outcome: _Outcome) -> None:
    outcome.status = await attempts


class _Lookup(NamedTuple):
    match: Match
    plan: RoutePlan
    method: str
    host: str
    path: str
    query: str
    headers: HeaderView


_MAX_PLANS = 4096
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_SCHEMES = {b"http": "http", b"https": "https"}


def _local(answer: LocalResponse) -> bytes:
    headers: Headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
    head = encode_head(status_line(answer.status), headers, Framing.LENGTH, len(answer.body))
    return head + answer.body


def _answer_error(stream: Stream, error: GatewayError) -> None:
    if stream.response_started:
        stream.abort()
    else:
        stream.send_local(render(error))


class _Outcome:
    """What one request came to, for the statistics."""

    __slots__ = ("ended", "picked", "route", "started", "status", "telemetry", "token")

    def __init__(self, started: float) -> None:
        self.route = ""
        self.status = 0
        self.started = started
        self.ended = 0.0  # the clock when the last attempt's answer was relayed
        self.picked: tuple[str, Endpoint] | None = None  # see `Gateway.__call__`
        # The request's telemetry: current in the task (`token`), or held (the fast path).
        self.token: Token[RequestTelemetry | None] | None = None
        self.telemetry: RequestTelemetry | None = None


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"
    status = 413
