from __future__ import annotations

import pytest

from crossway.balance import Endpoint, Outcome, OutlierConfig
from crossway.core.clock import VirtualClock
from crossway.proxy.clusters import Cluster, Clusters

A = Endpoint("a", "10.0.0.1", 80)
B = Endpoint("b", "10.0.0.2", 80)


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "peak_ewma", "maglev"])
def test_every_policy_picks_from_the_current_set(policy: str) -> None:
    clusters = Clusters(clock=VirtualClock())
    assert clusters.pick("svc", policy) is None
    clusters.update("svc", [A, B])
    picked = {clusters.pick("svc", policy, key=str(i)) for i in range(50)}
    assert picked <= {A, B}
    clusters.update("svc", [B])
    assert {clusters.pick("svc", policy, key=str(i)) for i in range(20)} == {B}


def test_failing_endpoint_is_ejected_and_comes_back() -> None:
    clock = VirtualClock()
    config = OutlierConfig(consecutive_5xx=3, base_ejection_time=30.0, max_ejection_percent=50.0)
    cluster = Cluster("svc", clock=clock, outlier=config)
    cluster.update([A, B])
    for _ in range(3):
        cluster.record("a", Outcome.GATEWAY_ERROR)
    assert {cluster.pick("round_robin") for _ in range(20)} == {B}
    assert cluster.describe()["endpoints"][0]["ejected"] is True
    clock.advance(31.0)
    assert {cluster.pick("round_robin") for _ in range(20)} == {A, B}


def test_a_balancer_created_later_starts_with_the_ejections() -> None:
    clock = VirtualClock()
    cluster = Cluster(
        "svc", clock=clock, outlier=OutlierConfig(consecutive_5xx=1, max_ejection_percent=50.0)
    )
    cluster.update([A, B])
    cluster.record("a", Outcome.ERROR)
    assert {cluster.pick("least_request") for _ in range(20)} == {B}
