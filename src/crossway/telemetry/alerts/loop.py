"""The thin async driver of alert evaluation: evaluate every `interval`, hand off notifications.

`AlertLoop` owns one task. Each tick runs `Engine.evaluate` against the
source (pure and quick: no I/O) and submits the notifications to the
`Dispatcher`, whose per-notifier workers do the sending. A tick never waits
for a receiver, so a dead webhook cannot slow evaluation down, and an
exception in one tick is logged and the next tick runs as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from crossway.telemetry.alerts.engine import Engine, Notification, Source
from crossway.telemetry.alerts.notifiers import Dispatcher
from crossway.telemetry.alerts.rules import RuleSet

log = logging.getLogger("crossway.alerts")

DEFAULT_INTERVAL = 10.0


class AlertLoop:
    def __init__(
        self,
        engine: Engine,
        source: Source,
        dispatcher: Dispatcher,
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError("the evaluation interval must be positive")
        self.engine = engine
        self.source = source
        self.dispatcher = dispatcher
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def load(self, rules: RuleSet) -> None:
        """Switch the engine and the notifiers to `rules` (takes effect at the next tick)."""
        await self.dispatcher.configure(rules.notifiers)
        self.engine.load(rules)

    def tick(self) -> list[Notification]:
        """Evaluate once now and queue the notifications; returns them.

        Synchronous and quick (no I/O): a full notifier queue drops, never waits."""
        notifications = self.engine.evaluate(self.source)
        for notification in notifications:
            self.dispatcher.submit(notification)
        return notifications

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop evaluating and stop the notifiers (queued notifications are dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.dispatcher.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.tick()
            except Exception:
                log.exception("alert evaluation failed")
