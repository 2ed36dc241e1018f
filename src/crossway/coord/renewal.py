"""When a session's owner renews it, and when it must assume it is lost (pure).

The owner of a session cannot know the instant the control plane lets it
expire; it can only bound it. The lease is renewed *at the earliest* when the
renewal request is sent, so the session cannot expire before
`sent + ttl` of the last renewal that succeeded — and may expire right then.
Hence:

Rule 1. Renew every ttl/3: two renewals can fail in a row before it matters.
Rule 2. After a failure, retry soon (every min(1 s, ttl/10)) rather than at the
        next third, so a brief outage costs little of the remaining time.
Rule 3. At `deadline = last successful send + ttl` the owner must act as if
        the session (and every lock it held) is gone: stop the protected work.
        Nothing later than the deadline is ever scheduled, and a request is
        never given longer than what is left before it.

Times are `Clock.now()` seconds; nothing here sleeps or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRY_CEILING = 1.0
MIN_REQUEST_TIMEOUT = 0.05


@dataclass(slots=True)
class RenewalSchedule:
    ttl: float
    last_renewed: float
    """When the last renewal that succeeded was sent (or the session created)."""
    failures: int = 0

    @property
    def deadline(self) -> float:
        return self.last_renewed + self.ttl

    def delay(self, now: float) -> float:
        """Seconds to wait before the next renewal attempt (Rules 1 and 2)."""
        if self.failures == 0:
            due = self.last_renewed + self.ttl / 3
        else:
            due = now + min(RETRY_CEILING, self.ttl / 10)
        return max(0.0, min(due, self.deadline) - now)

    def request_timeout(self, now: float) -> float:
        """How long one renewal request may take (Rule 3)."""
        return max(MIN_REQUEST_TIMEOUT, min(self.ttl / 3, self.deadline - now))

    def renewed(self, sent_at: float) -> None:
        self.last_renewed = max(self.last_renewed, sent_at)
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1

    def lost(self, now: float) -> bool:
        return now >= self.deadline
