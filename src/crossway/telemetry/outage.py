"""Logging a dead endpoint once per outage, not once per failed attempt.

Background senders (the golden-signal pusher, the span reporter) try every
second or ten; a control plane that is down for an hour would otherwise write
hundreds of identical warnings. `OutageLog` turns a stream of failures and
successes into one warning when the endpoint goes down and one line when it
comes back, and counts both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass(slots=True)
class OutageLog:
    """The up/down state of one endpoint, as seen by one sender."""

    what: str
    """What is being sent, for the log lines ("spans", "golden signals")."""
    endpoint: str
    logger: logging.Logger
    down: bool = False
    outages: int = 0
    """How many times the endpoint went from reachable to failing."""

    def failed(self, why: str) -> None:
        if self.down:
            return
        self.down = True
        self.outages += 1
        self.logger.warning(
            "sending %s to %s failed (%s); dropping them until it answers again",
            self.what,
            self.endpoint,
            why,
        )

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            self.logger.info("sending %s to %s works again", self.what, self.endpoint)
