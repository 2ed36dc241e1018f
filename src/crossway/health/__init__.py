"""Active health checks run by the control plane: HTTP, TCP and gRPC probes,
a jittered schedule per instance with bounded concurrency, Consul's flapping
guard, status transitions written as store events, and removal of instances
that stay critical for their `deregister_after`.

TTL leases (passive health) live in `crossway.registry`: an instance whose
lease expires disappears without any probe.
"""

from crossway.health.checker import HealthChecker, HealthStats
from crossway.health.policy import (
    CheckTiming,
    Schedule,
    StatusMachine,
    Thresholds,
    Verdict,
    first_delay,
    jittered,
    wake_at,
)
from crossway.health.probes import Prober, ProbeResult, probe_grpc, probe_http, probe_tcp

__all__ = [
    "CheckTiming",
    "HealthChecker",
    "HealthStats",
    "ProbeResult",
    "Prober",
    "Schedule",
    "StatusMachine",
    "Thresholds",
    "Verdict",
    "first_delay",
    "jittered",
    "probe_grpc",
    "probe_http",
    "probe_tcp",
    "wake_at",
]
