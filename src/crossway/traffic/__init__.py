"""Traffic policy documents shared by the SDK and the proxy: the per-service
call policy (`/policies/{service}`) today."""

from crossway.traffic.policy import (
    DEFAULT_NAME,
    POLICY_PREFIX,
    BackoffSpec,
    BreakerSpec,
    BudgetSpec,
    BulkheadSpec,
    CallPolicy,
    OutlierSpec,
    RetrySpec,
    check_policy,
    decode_policy,
    encode_policy,
)

__all__ = [
    "DEFAULT_NAME",
    "POLICY_PREFIX",
    "BackoffSpec",
    "BreakerSpec",
    "BudgetSpec",
    "BulkheadSpec",
    "CallPolicy",
    "OutlierSpec",
    "RetrySpec",
    "check_policy",
    "decode_policy",
    "encode_policy",
]
