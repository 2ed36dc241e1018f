"""The package exports a deliberate surface, and nothing by accident."""

from __future__ import annotations

import crossway.health


def test_public_names() -> None:
    assert sorted(crossway.health.__all__) == [
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
    for name in crossway.health.__all__:
        assert getattr(crossway.health, name).__module__.startswith("crossway.health.")
