"""Locks, leader election and leader-only scheduled jobs, from inside a service.

Theory of operation (the control plane's side is docs/coordination.md)
- Everything rests on a `Session`: a lease on the control plane that this
  process renews in the background (`crossway.coord.renewal.RenewalSchedule`:
  every ttl/3, retried sooner after a failure). Whatever the session holds
  (a lock, a candidacy) is released when it ends — deliberately, or one TTL
  after its last renewal when this process dies or is cut off.
- The session is *lost* when the control plane says it is gone (404), or when
  no renewal succeeded for a whole TTL counted from when the last good one was
  *sent* (the earliest moment the control plane may let it go). From then on
  what it held may already be someone else's, so `lost` is an event the
  holders act on at once.
- `Lock` (`async with client.lock("name") as fence`): a session of its own,
  acquired with `PUT /v1/locks/{name}`, released by ending the session on the
  way out. If the session is lost while the block runs, the block's task is
  cancelled and `LockLost` is raised out of the `async with` (pass
  `cancel_on_loss=False` to keep running and check `lock.held` yourself).
  That narrows the window but cannot close it: a process can pause between
  any check and the write that follows. The fence closes it: pass it with
  every write and let the storage refuse fences lower than the highest it has
  seen (docs/coordination.md, "Fencing tokens").
- `Leader`: campaigns in the background with `queue=true` (it stays a
  candidate between requests), calls `on_elected(fence)` when it leads and
  `on_revoked()` when that ends (session lost, or `stop()`), then campaigns
  again with a new session. An `on_elected` coroutine that is still running
  when leadership ends is cancelled first, so it can simply loop for as long
  as it leads.
- `ScheduledJob`: a `Leader` of election `job.<name>` whose `on_elected` runs
  the function at every multiple of `every` since the Unix epoch — once per
  cluster, not once per process or worker. Slots are aligned to the clock, so
  a new leader continues the same timetable instead of starting its own.

Invariants
- Every task is created by `start()`/`__aenter__` (never at construction) and
  cancelled and awaited by `stop()`/`__aexit__`; a session is ended (best
  effort, bounded) whenever its holder leaves, including on cancellation.
- `on_revoked` runs before the session ends, so the leader's work has stopped
  before the next leader can be elected.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from crossway.coord.model import check_name
from crossway.coord.renewal import RenewalSchedule
from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import format_duration
from crossway.core.errors import Conflict
from crossway.resilience.backoff import Backoff, Jitter
from crossway.sdk.control import ControlPlane, ControlPlaneError, ControlPlaneUnavailable

log = logging.getLogger("crossway.sdk.coordination")

Callback = Callable[..., Any]
"""A plain function or a coroutine function."""
Text = str | Callable[[], str]
"""A string, or a function giving it when it is needed (after a pre-fork server forked)."""

MAX_TURN = 60.0
"""Seconds one waiting request asks for; longer waits are asked in turns."""
REQUEST_MARGIN = 10.0
"""Seconds a waiting request gets beyond its wait before the client gives up."""
CLOSE_TIMEOUT = 2.0
RETRY = Backoff(base=0.2, cap=5.0, jitter=Jitter.EQUAL)
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class LockNotAcquired(Conflict):
    """The lock stayed held by others for the whole wait."""

    code = "lock_not_acquired"


class SessionLost(Conflict):
    """The session may have ended: what it held may belong to someone else."""

    code = "session_lost"


class LockLost(SessionLost):
    """The lock's session was lost while the protected block ran."""

    code = "lock_lost"


class Session:
    """A control-plane session renewed in the background; see the module header."""

    def __init__(
        self, control: ControlPlane, *, ttl: float, name: str, clock: Clock | None = None
    ) -> None:
        self.control = control
        self.ttl = ttl
        self.name = name[:128]
        self.clock = clock or SystemClock()
        self.id = ""
        self.lost = asyncio.Event()
        self.reason = ""
        self._schedule = RenewalSchedule(ttl, self.clock.now())
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self._schedule.lost(self.clock.now())

    async def open(self) -> str:
        """Create the session and start renewing it. Raises
        `ControlPlaneUnavailable`/`ControlPlaneError`; nothing is left behind."""
        sent = self.clock.now()
        body = {"ttl": format_duration(self.ttl), "name": self.name}
        created = await self.control.json("POST", "/v1/sessions", json=body)
        self.id = str(created["session"])
        self._schedule = RenewalSchedule(self.ttl, sent)
        self._task = asyncio.create_task(self._keep(), name=f"crossway-session-{self.id}")
        return self.id

    async def close(self, *, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop renewing and end the session, releasing all it holds (best
        effort within `timeout`: if the request fails, the TTL ends it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not `await task`: a cancellation of this call must propagate,
            # not be mistaken for the task's own CancelledError and swallowed.
            await asyncio.wait({task})
        if self.id and not self.lost.is_set():
            self._lose("closed")
            try:
                async with asyncio.timeout(timeout):
                    await self.control.request("DELETE", f"/v1/sessions/{self.id}")
            except (TimeoutError, ControlPlaneUnavailable, ControlPlaneError) as exc:
                log.info("could not end session %s (its TTL will): %s", self.id, exc)

    async def _keep(self) -> None:
        schedule = self._schedule
        while True:
            await asyncio.sleep(schedule.delay(self.clock.now()))
            if schedule.lost(self.clock.now()):
                self._lose(f"not renewed for {format_duration(self.ttl)}")
                return
            sent = self.clock.now()
            timeout = schedule.request_timeout(sent)
            try:
                await self.control.request("PUT", f"/v1/sessions/{self.id}/renew", timeout=timeout)
            except ControlPlaneUnavailable:
                schedule.failed()
                continue
            except ControlPlaneError as exc:
                self._lose(exc.message)
                return
            schedule.renewed(sent)

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


async def until_lost(session: Session, work: Awaitable[Any]) -> Any:
    """`work`'s result, unless the session is lost first (`SessionLost`;
    `work` is then cancelled). Cancelling this cancels `work` too."""
    task = asyncio.ensure_future(work)
    lost = asyncio.ensure_future(session.lost.wait())
    finished = False
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finished = task.done()
    finally:
        lost.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, lost, return_exceptions=True)
    if not finished:
        raise SessionLost(f"session {session.id} lost: {session.reason}")
    return task.result()


class Lock:
    """`async with client.lock("name") as fence:`; see the module header.

    `wait` is seconds to wait for the lock (None: as long as it takes);
    `LockNotAcquired` when it runs out. Cancelling the wait gives up the
    place in line. Each `async with` uses a session of its own; one `Lock`
    object is entered by one task at a time.
    """

    def __init__(
        self,
        control: ControlPlane,
        name: str,
        *,
        ttl: float,
        wait: float | None,
        session_name: str,
        cancel_on_loss: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.control = control
        self.name = check_name(name)
        self.ttl = ttl
        self.wait = wait
        self.session_name = session_name
        self.cancel_on_loss = cancel_on_loss
        self.clock = clock or SystemClock()
        self.fence: int | None = None
        self._session: Session | None = None
        self._holder: asyncio.Task[Any] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._cancelled = False

    @property
    def held(self) -> bool:
        """True while the lock's session is certainly alive (see `Session.alive`)."""
        return self._session is not None and self._session.alive

    def check(self) -> None:
        """Raise `LockLost` unless `held` (for `cancel_on_loss=False` users)."""
        if not self.held:
            raise LockLost(f"lock {self.name} is no longer held")

    async def __aenter__(self) -> int:
        if self._session is not None:
            raise RuntimeError(f"lock {self.name} is already entered")
        session = Session(self.control, ttl=self.ttl, name=self.session_name, clock=self.clock)
        await session.open()
        try:
            fence: int = await until_lost(session, self._acquire(session))
        except BaseException:
            await session.close()
            raise
        self._session, self.fence, self._cancelled = session, fence, False
        self._holder = asyncio.current_task()
        self._watch = asyncio.create_task(self._watch_loss(session))
        return fence

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        session, self._session = self._session, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            # wait(), not `await watch`: a cancellation of this call must propagate,
            # not be mistaken for the task's own CancelledError and swallowed.
            await asyncio.wait({watch})
        if session is not None:
            await session.close()
        holder, self._holder = self._holder, None
        ours = self._cancelled and exc_type is asyncio.CancelledError and holder is not None
        # uncancel() == 0: the only cancellation pending was ours, nobody else's.
        if ours and holder is not None and holder.uncancel() == 0:
            reason = session.reason if session is not None else "session lost"
            raise LockLost(f"lock {self.name} lost while held: {reason}")

    async def _acquire(self, session: Session) -> int:
        remaining = self.wait
        path = f"/v1/locks/{self.name}"
        while True:
            turn = MAX_TURN if remaining is None else max(0.0, min(remaining, MAX_TURN))
            params = {"session": session.id, "wait": format_duration(turn)}
            started = self.clock.now()
            try:
                held = await self.control.json(
                    "PUT", path, params=params, timeout=turn + REQUEST_MARGIN
                )
                return int(held["fence"])
            except ControlPlaneError as exc:
                if exc.status != 409 or exc.code != "conflict":
                    raise
            if remaining is not None:
                remaining -= self.clock.now() - started
                if remaining <= 0:
                    raise LockNotAcquired(f"lock {self.name} is held by another session")

    async def _watch_loss(self, session: Session) -> None:
        await session.lost.wait()
        log.warning("lock %s lost while held: %s", self.name, session.reason)
        holder = self._holder
        if self.cancel_on_loss and holder is not None and not holder.done():
            self._cancelled = True
            holder.cancel(f"lock {self.name} lost")


class Leader:
    """Campaigns for `name` in the background while started; see the module header."""

    def __init__(
        self,
        control: ControlPlane,
        name: str,
        *,
        value: Text,
        ttl: float,
        session_name: Text,
        on_elected: Callback | None = None,
        on_revoked: Callback | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.control = control
        self.name = check_name(name)
        self.value = value
        self.ttl = ttl
        self.session_name = session_name
        self.on_elected = on_elected
        self.on_revoked = on_revoked
        self.clock = clock or SystemClock()
        self.fence: int | None = None
        self.terms = 0
        """How many times this process has been elected."""
        self._leading = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = False

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        """Begin campaigning (needs a running event loop). Idempotent."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"crossway-leader-{self.name}")

    async def stop(self) -> None:
        """Stop campaigning: if leading, `on_revoked` runs, then the session
        ends so another candidate is elected at once. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not `await task`: a cancellation of this call must propagate,
            # not be mistaken for the task's own CancelledError and swallowed.
            await asyncio.wait({task})

    async def wait_elected(self) -> int:
        """Wait until this process leads; its fence."""
        await self._leading.wait()
        assert self.fence is not None
        return self.fence

    async def current(self) -> dict[str, Any] | None:
        """Who leads now, as the control plane says (`{"session", "value", "fence", …}`)."""
        answer = await self.control.json("GET", f"/v1/elections/{self.name}/leader")
        leader: dict[str, Any] | None = answer.get("leader")
        return leader

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._term()
                failures = 0
            except SessionLost as exc:
                log.info("election %s: %s; campaigning again", self.name, exc.message)
                failures = 0
            except (ControlPlaneUnavailable, ControlPlaneError) as exc:
                failures += 1
                self._failed(exc)
            except Exception:
                failures += 1
                log.exception("election %s failed unexpectedly", self.name)
            await asyncio.sleep(RETRY.delay(failures) if failures else 0.0)

    async def _term(self) -> None:
        name = resolve(self.session_name)
        session = Session(self.control, ttl=self.ttl, name=name, clock=self.clock)
        await session.open()
        try:
            fence = await until_lost(session, self._campaign(session))
            self._reachable()
            await self._lead(session, fence)
        finally:
            await session.close()  # resign: the next candidate leads at once

    async def _campaign(self, session: Session) -> int:
        params = {"session": session.id, "wait": format_duration(MAX_TURN), "queue": "true"}
        while True:
            answer = await self.control.request(
                "PUT",
                f"/v1/elections/{self.name}",
                params=params,
                json={"value": resolve(self.value)},
                timeout=MAX_TURN + REQUEST_MARGIN,
            )
            body = answer.json()
            if answer.status_code == 200 and body.get("elected"):
                return int(body["fence"])
            self._reachable()  # 202: queued, still a candidate; ask again

    async def _lead(self, session: Session, fence: int) -> None:
        self.fence = fence
        self.terms += 1
        self._leading.set()
        log.info("elected leader of %s (fence %d)", self.name, fence)
        work = asyncio.create_task(call(self.on_elected, fence))
        try:
            await session.lost.wait()
            raise SessionLost(f"leadership of {self.name} lost: {session.reason}")
        finally:
            self._leading.clear()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            log.info("no longer leader of %s", self.name)
            await call(self.on_revoked)

    def _failed(self, exc: ControlPlaneUnavailable | ControlPlaneError) -> None:
        if not self._outage:
            self._outage = True
            log.warning("election %s: %s; retrying", self.name, exc.message)

    def _reachable(self) -> None:
        self._outage = False


async def call(callback: Callback | None, *args: Any) -> None:
    """Call a sync or async user callback; its failure is logged, not raised.
    Cancellation propagates (a running coroutine callback is cancelled)."""
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("callback %s failed", getattr(callback, "__qualname__", callback))


def resolve(text: Text) -> str:
    return text if isinstance(text, str) else text()


def next_slot(now: float, every: float) -> float:
    """The first multiple of `every` (seconds since the epoch) after `now`."""
    return (math.floor(now / every) + 1) * every


def job_election(name: str) -> str:
    """The election behind a scheduled job: `job.<name>`, made a valid name."""
    cleaned = _NOT_NAME.sub("-", name).strip("-._") or "job"
    return f"job.{cleaned}"[:128].rstrip("-._")


class ScheduledJob:
    """Runs `fn` every `every` seconds on the leader of `job.<name>` only.

    A run is skipped, not queued, when the previous one is still going at the
    next slot. An async `fn` is cancelled when leadership ends; a sync `fn`
    runs in a worker thread and finishes its current run. Failures are
    logged and the schedule carries on.
    """

    def __init__(
        self,
        fn: Callback,
        *,
        every: float,
        leader: Callable[[Callback], Leader],
        clock: Clock | None = None,
    ) -> None:
        if every <= 0:
            raise ValueError("every must be a positive duration")
        self.fn = fn
        self.every = every
        self.clock = clock or SystemClock()
        self.runs = 0
        self.leader = leader(self._while_leading)

    def start(self) -> None:
        self.leader.start()

    async def stop(self) -> None:
        await self.leader.stop()

    async def _while_leading(self, fence: int) -> None:
        while True:
            now = self.clock.wall()
            await asyncio.sleep(next_slot(now, self.every) - now)
            await self._run_once()

    async def _run_once(self) -> None:
        self.runs += 1
        try:
            if inspect.iscoroutinefunction(self.fn):
                await self.fn()
            else:
                await asyncio.to_thread(self.fn)
        except Exception:
            log.exception("scheduled job %s failed", self.leader.name)
