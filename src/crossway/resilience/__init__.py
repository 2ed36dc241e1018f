"""Resilience policies: circuit breakers, rate limiters, bulkheads, retries
with budgets, deadlines, hedging and adaptive concurrency.

Every policy is pure and clock-injected (no sockets, no sleeping, no event
loop in the math); thin sync and async wrappers — decorators and context
managers — sit on top. See docs/resilience.md and docs/rate-limits.md.
"""

from crossway.resilience.adaptive import (
    AdaptiveLimiter,
    ConcurrencyGuard,
    ConcurrencyLimited,
    Gradient2,
    GradientController,
    Vegas,
    Windowed,
)
from crossway.resilience.backoff import Backoff, Jitter
from crossway.resilience.breaker import BreakerConfig, CircuitBreaker, WindowType
from crossway.resilience.budget import ConcurrentRetryBudget, RetryBudget
from crossway.resilience.bulkhead import Bulkhead, BulkheadFullError
from crossway.resilience.classify import FailurePolicy
from crossway.resilience.consecutive import ConsecutiveBreaker
from crossway.resilience.deadline import (
    Deadline,
    DeadlineExceeded,
    attempt_timeout,
    current_deadline,
    deadline_scope,
    format_grpc_timeout,
    parse_grpc_timeout,
    remaining_time,
)
from crossway.resilience.gcra import GCRA
from crossway.resilience.guard import CircuitOpenError, State, StateTransition
from crossway.resilience.hedge import Hedge, HedgePolicy, hedged
from crossway.resilience.keyed import AsyncKeyedLimiter, KeyedLimiter, SyncKeyedLimiter
from crossway.resilience.limiter import (
    AsyncLimiter,
    Decision,
    RateLimited,
    RateLimiter,
    SyncLimiter,
    parse_rate,
)
from crossway.resilience.redis_limiter import AsyncRedisGCRA, LimiterUnavailable, RedisGCRA
from crossway.resilience.retry import Retry, RetryPolicy, retry
from crossway.resilience.sliding_counter import SlidingWindowCounter
from crossway.resilience.token_bucket import TokenBucket
from crossway.resilience.warmup import WarmUp
from crossway.resilience.window import CountWindow, TimeWindow

__all__ = [
    "GCRA",
    "AdaptiveLimiter",
    "AsyncKeyedLimiter",
    "AsyncLimiter",
    "AsyncRedisGCRA",
    "Backoff",
    "BreakerConfig",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConcurrencyGuard",
    "ConcurrencyLimited",
    "ConcurrentRetryBudget",
    "ConsecutiveBreaker",
    "CountWindow",
    "Deadline",
    "DeadlineExceeded",
    "Decision",
    "FailurePolicy",
    "Gradient2",
    "GradientController",
    "Hedge",
    "HedgePolicy",
    "Jitter",
    "KeyedLimiter",
    "LimiterUnavailable",
    "RateLimited",
    "RateLimiter",
    "RedisGCRA",
    "Retry",
    "RetryBudget",
    "RetryPolicy",
    "SlidingWindowCounter",
    "State",
    "StateTransition",
    "SyncKeyedLimiter",
    "SyncLimiter",
    "TimeWindow",
    "TokenBucket",
    "Vegas",
    "WarmUp",
    "WindowType",
    "Windowed",
    "attempt_timeout",
    "current_deadline",
    "deadline_scope",
    "format_grpc_timeout",
    "hedged",
    "parse_grpc_timeout",
    "parse_rate",
    "remaining_time",
    "retry",
]
