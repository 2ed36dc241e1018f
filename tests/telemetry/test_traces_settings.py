"""CROSSWAY_TRACES_* settings."""

from __future__ import annotations

import pytest

from crossway.core.errors import InvalidArgument
from crossway.telemetry.traces.forward import ForwardTarget
from crossway.telemetry.traces.settings import DEFAULT_MAX_BODY, TraceSettings
from crossway.telemetry.traces.store import TracePolicy


def test_defaults() -> None:
    settings = TraceSettings.from_env({})
    assert settings.policy == TracePolicy()
    assert settings.forward is None
    assert settings.max_body_bytes == DEFAULT_MAX_BODY


def test_every_variable() -> None:
    settings = TraceSettings.from_env(
        {
            "CROSSWAY_TRACES_FORWARD": "otlp+http://collector:4318",
            "CROSSWAY_TRACES_MAX_SPANS": "5000",
            "CROSSWAY_TRACES_MAX_MEMORY": "64MB",
            "CROSSWAY_TRACES_QUIET": "2s",
            "CROSSWAY_TRACES_SLOW": "750ms",
            "CROSSWAY_TRACES_KEEP": "0.1",
            "CROSSWAY_TRACES_MAX_BODY": "512KiB",
        }
    )
    policy = settings.policy
    assert (policy.max_spans, policy.max_bytes, policy.quiet_period) == (5000, 64 << 20, 2.0)
    assert (policy.slow_threshold, policy.keep_fraction) == (0.75, 0.1)
    assert settings.forward == ForwardTarget("otlp", "http://collector:4318/v1/traces")
    assert settings.max_body_bytes == 512 << 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_SPANS", "many"),
        ("MAX_MEMORY", "lots"),
        ("MAX_MEMORY", "0"),
        ("QUIET", "soon"),
        ("KEEP", "half"),
        ("KEEP", "2"),
        ("FORWARD", "http://nowhere"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TraceSettings.from_env({f"CROSSWAY_TRACES_{name}": value})
    message = caught.value.message
    assert f"CROSSWAY_TRACES_{name}" in message
