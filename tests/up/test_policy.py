"""Restart decisions and the backoff schedule, on a virtual clock."""

from __future__ import annotations

from crossway.up.policy import Backoff, after_exit, describe_exit


def test_the_backoff_doubles_from_one_second_to_thirty() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.delay(10_000) == 30


def test_a_crash_loop_follows_the_schedule_and_resets_after_a_healthy_minute() -> None:
    now, failures, delays = 0.0, 0, []
    for _ in range(7):  # exits right after each start, never healthy
        decision = after_exit(
            code=1,
            mode="on-failure",
            stopping=False,
            failures=failures,
            healthy_since=None,
            now=now,
        )
        assert decision.restart
        delays.append(decision.delay)
        failures = decision.failures
        now += decision.delay
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    # Healthy for 59 s: still counted as part of the same run of failures.
    short = after_exit(
        code=1,
        mode="on-failure",
        stopping=False,
        failures=failures,
        healthy_since=now,
        now=now + 59,
    )
    assert short.delay == 30
    # Healthy for 60 s: the count starts over.
    now += 1000
    long = after_exit(
        code=1,
        mode="on-failure",
        stopping=False,
        failures=failures,
        healthy_since=now - 60,
        now=now,
    )
    assert (long.delay, long.failures) == (1, 1)


def test_restart_modes_and_deliberate_stops() -> None:
    def decide(code: int, mode: str, stopping: bool = False) -> bool:
        return after_exit(
            code=code,
            mode=mode,
            stopping=stopping,
            failures=0,  # type: ignore[arg-type]
            healthy_since=None,
            now=0,
        ).restart

    assert decide(1, "on-failure")
    assert decide(-9, "on-failure")
    assert not decide(0, "on-failure")
    assert decide(0, "always")
    assert decide(3, "always")
    assert not decide(1, "never")
    assert not decide(1, "always", stopping=True)


def test_exits_are_described_for_people() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"
