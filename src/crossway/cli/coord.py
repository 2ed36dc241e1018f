"""`crossway lock NAME -- COMMAND` and `crossway elect NAME [-- COMMAND]`.

Both talk to the control plane over HTTP and hold a session for as long as
they run: created at start, renewed in the background (`RenewalSchedule`:
every ttl/3, sooner after a failure), ended on exit — which releases whatever
it held, even if the release call itself is lost.

`lock` acquires the lock (waiting up to --wait, default forever), runs COMMAND
with `CROSSWAY_LOCK_FENCE` (the fencing token), `CROSSWAY_LOCK_NAME` and
`CROSSWAY_SESSION` in its environment, releases the lock when it exits and
exits with its status. `elect` campaigns, prints `elected: …` when it leads,
then holds leadership until Ctrl-C/SIGTERM (it resigns cleanly), or runs
COMMAND while it leads (`CROSSWAY_LEADER_FENCE`, `CROSSWAY_ELECTION`).

If the session may be lost — the control plane says it expired, or it could
not be renewed for a whole TTL — the lock or the leadership may already belong
to someone else: COMMAND gets SIGTERM, then SIGKILL after --grace, and the
command exits with status 4 and a one-line message. Status 3 means the lock
was not acquired within --wait; 130 an interrupt before COMMAND ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx2
import typer

from crossway.cli._common import EXIT_INTERRUPTED, fail
from crossway.cli._http import DEFAULT_URL, CliFailure, Token, Url, error_text
from crossway.coord.renewal import RenewalSchedule
from crossway.core.durations import format_duration, parse_duration

EXIT_NOT_ACQUIRED = 3
EXIT_LOST = 4
REQUEST_MARGIN = 10.0
"""Seconds a waiting request gets beyond its `wait` before the client gives up."""
CAMPAIGN_TURN = 60.0
LONGEST_WAIT = 600.0
"""The server's limit on one wait; longer waits are asked for in turns."""

Ttl = Annotated[
    str,
    typer.Option("--ttl", envvar="CROSSWAY_TTL", help="Session TTL: how long a crash holds on."),
]
Grace = Annotated[
    str, typer.Option("--grace", help="Time COMMAND gets after SIGTERM before SIGKILL.")
]
Command = Annotated[
    list[str] | None, typer.Argument(help="The command to run (after --).", show_default=False)
]


def register(app: typer.Typer) -> None:
    app.command("lock")(lock)
    app.command("elect")(elect)


def lock(
    name: Annotated[str, typer.Argument(help="The lock.")],
    command: Command = None,
    ttl: Ttl = "10s",
    wait: Annotated[
        str | None,
        typer.Option("--wait", help="Give up after this long (default: wait forever)."),
    ] = None,
    grace: Grace = "10s",
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Run COMMAND while holding lock NAME: crossway lock nightly -- ./job.sh"""
    where = "crossway lock"
    if not command:
        fail(where, "nothing to run: crossway lock NAME -- COMMAND [ARGS...]", code=2)
    settings = _Settings(
        url, token, _seconds(where, "--ttl", ttl), _seconds(where, "--grace", grace)
    )
    limit = _seconds(where, "--wait", wait) if wait is not None else None
    _exit(where, _LockRun(settings, name, command, limit).main)


def elect(
    name: Annotated[str, typer.Argument(help="The election.")],
    command: Command = None,
    value: Annotated[
        str | None,
        typer.Option("--value", help="What the others learn about the leader (default host:pid)."),
    ] = None,
    ttl: Ttl = "10s",
    grace: Grace = "10s",
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Campaign in election NAME; lead until Ctrl-C, or run COMMAND while leading."""
    where = "crossway elect"
    settings = _Settings(
        url, token, _seconds(where, "--ttl", ttl), _seconds(where, "--grace", grace)
    )
    mine = value if value is not None else f"{socket.gethostname()}:{os.getpid()}"
    _exit(where, _ElectRun(settings, name, command or [], mine).main)


# Plumbing shared by both commands.


class SessionLost(Exception):
    """The session may have expired: whatever it held may be someone else's."""


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str
    token: str | None
    ttl: float
    grace: float


@dataclass(slots=True)
class _Plane:
    """An async client of the control plane; failures become `CliFailure`."""

    settings: _Settings
    http: httpx2.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        token = self.settings.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx2.AsyncClient(base_url=self.settings.url.rstrip("/"), headers=headers)

    async def call(
        self,
        method: str,
        path: str,
        *,
        accept: tuple[int, ...] = (),
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> httpx2.Response:
        try:
            response = await self.http.request(method, path, timeout=timeout, **kwargs)
        except httpx2.HTTPError as exc:
            why = str(exc) or type(exc).__name__
            raise CliFailure(
                f"cannot reach the control plane at {self.settings.url} ({why}); "
                "is `crossway server` running? (--url / CROSSWAY_URL)"
            ) from None
        if response.status_code >= 400 and response.status_code not in accept:
            raise CliFailure(error_text(response))
        return response


class _SessionKeeper:
    """Creates the session, renews it per `RenewalSchedule`, ends it on exit."""

    def __init__(self, plane: _Plane, label: str) -> None:
        self.plane = plane
        self.label = label[:128]
        self.id = ""

    async def open(self) -> str:
        ttl = format_duration(self.plane.settings.ttl)
        created = await self.plane.call(
            "POST", "/v1/sessions", json={"ttl": ttl, "name": self.label}
        )
        self.id = str(created.json()["session"])
        return self.id

    async def keep(self) -> None:
        """Renew until cancelled; raises `SessionLost` (Rule 3 of the schedule)."""
        loop = asyncio.get_running_loop()
        schedule = RenewalSchedule(self.plane.settings.ttl, loop.time())
        while True:
            await asyncio.sleep(schedule.delay(loop.time()))
            if schedule.lost(loop.time()):
                raise SessionLost(
                    f"could not renew session {self.id} for {format_duration(schedule.ttl)}: "
                    "what it held may belong to someone else now"
                )
            sent = loop.time()
            if await self._renew(schedule.request_timeout(sent)):
                schedule.renewed(sent)
            else:
                schedule.failed()

    async def _renew(self, timeout: float) -> bool:
        try:
            response = await self.plane.call(
                "PUT", f"/v1/sessions/{self.id}/renew", accept=(404,), timeout=timeout
            )
        except CliFailure:
            return False
        if response.status_code == 404:
            raise SessionLost(f"session {self.id} expired: {error_text(response)}")
        return True

    async def close(self) -> None:
        """End the session (best effort: if this fails, the TTL ends it)."""
        if self.id:
            with contextlib.suppress(CliFailure):
                await self.plane.call("DELETE", f"/v1/sessions/{self.id}", accept=(404,))


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Run:
    """What `lock` and `elect` share: a session kept alive, signals, a child."""

    def __init__(self, settings: _Settings, label: str) -> None:
        self.plane = _Plane(settings)
        self.keeper = _SessionKeeper(
            self.plane, f"{label} on {socket.gethostname()} pid {os.getpid()}"
        )
        self.signals: asyncio.Queue[int] = asyncio.Queue()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.signals.put_nowait, signum)
        try:
            await self.keeper.open()
            keeping = asyncio.ensure_future(self.keeper.keep())
            try:
                return await self.hold(keeping)
            finally:
                keeping.cancel()
                await asyncio.gather(keeping, return_exceptions=True)
                if not _lost(keeping):  # else there is nothing left to release
                    await self.leave()
                    await self.keeper.close()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await self.plane.http.aclose()

    async def hold(self, keeping: asyncio.Future[None]) -> int:
        raise NotImplementedError

    async def leave(self) -> None:
        """Release what was acquired (best effort: ending the session does too)."""

    async def race(self, work: asyncio.Future[Any], keeping: asyncio.Future[None]) -> Any:
        """`work`'s result, unless the session is lost (`SessionLost`) or a
        signal arrives (`_Interrupted`) first; `work` is then cancelled."""
        interrupted = asyncio.ensure_future(self.signals.get())
        try:
            await asyncio.wait({work, keeping, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.done() and not work.cancelled():
            return work.result()
        if keeping.done():
            keeping.result()  # raises SessionLost
        raise _Interrupted(interrupted.result())

    async def supervise(
        self, argv: list[str], env: dict[str, str], keeping: asyncio.Future[None]
    ) -> int:
        """Run `argv` to its end and return its status (128+N for signal N);
        signals are passed on to it. If the session is lost it is stopped
        (SIGTERM, then SIGKILL after the grace) and `SessionLost` propagates."""
        try:
            child = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **env})
        except OSError as exc:
            raise CliFailure(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        exited = asyncio.ensure_future(child.wait())
        try:
            while True:
                try:
                    return _status(await self.race(asyncio.shield(exited), keeping))
                except _Interrupted as signalled:
                    child.send_signal(signalled.signum)
        except SessionLost:
            await self._stop(child, exited)
            raise

    async def _stop(self, child: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(exited), self.plane.settings.grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await exited


class _LockRun(_Run):
    def __init__(self, settings: _Settings, name: str, argv: list[str], wait: float | None):
        super().__init__(settings, f"lock {name}")
        self.name, self.argv, self.wait = name, argv, wait
        self.held = False

    async def hold(self, keeping: asyncio.Future[None]) -> int:
        acquired = await self.race(asyncio.ensure_future(self._acquire()), keeping)
        if acquired is None:
            return EXIT_NOT_ACQUIRED
        self.held = True
        fence = str(acquired["fence"])
        _say(f"crossway lock: holding {self.name} (fence {fence})")
        env = {
            "CROSSWAY_LOCK_FENCE": fence,
            "CROSSWAY_LOCK_NAME": self.name,
            "CROSSWAY_SESSION": self.keeper.id,
        }
        return await self.supervise(self.argv, env, keeping)

    async def _acquire(self) -> dict[str, Any] | None:
        """The holder's answer, or None (after saying who holds it) on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if self.wait is None else loop.time() + self.wait
        while True:
            turn = LONGEST_WAIT if deadline is None else max(0.0, deadline - loop.time())
            turn = min(turn, LONGEST_WAIT)
            response = await self.plane.call(
                "PUT",
                f"/v1/locks/{self.name}",
                params={"session": self.keeper.id, "wait": f"{turn:.3f}s"},
                accept=(409,),
                timeout=turn + REQUEST_MARGIN,
            )
            if response.status_code == 200:
                answer: dict[str, Any] = response.json()
                return answer
            if deadline is not None and loop.time() >= deadline:
                _say(f"crossway lock: {error_text(response)}")
                return None

    async def leave(self) -> None:
        if self.held:
            path = f"/v1/locks/{self.name}"
            with contextlib.suppress(CliFailure):
                await self.plane.call("DELETE", path, params={"session": self.keeper.id})


class _ElectRun(_Run):
    def __init__(self, settings: _Settings, name: str, argv: list[str], value: str):
        super().__init__(settings, f"elect {name}")
        self.name, self.argv, self.value = name, argv, value
        self.campaigning = False

    async def hold(self, keeping: asyncio.Future[None]) -> int:
        self.campaigning = True
        won = await self.race(asyncio.ensure_future(self._campaign()), keeping)
        summary = f"fence {won['fence']}, value {won['value']!r}"
        _say(f"elected: leader of {self.name} ({summary})", to_stdout=True)
        if self.argv:
            env = {
                "CROSSWAY_LEADER_FENCE": str(won["fence"]),
                "CROSSWAY_ELECTION": self.name,
                "CROSSWAY_SESSION": self.keeper.id,
            }
            return await self.supervise(self.argv, env, keeping)
        with contextlib.suppress(_Interrupted):
            await self.race(asyncio.ensure_future(asyncio.Event().wait()), keeping)
        return 0

    async def _campaign(self) -> dict[str, Any]:
        """Campaign in turns, keeping the place in line between them; the
        first turn does not wait, so who leads is said at once."""
        announced, wait = None, 0.0
        while True:
            response = await self.plane.call(
                "PUT",
                f"/v1/elections/{self.name}",
                params={"session": self.keeper.id, "wait": f"{wait:g}s", "queue": "true"},
                json={"value": self.value},
                timeout=wait + REQUEST_MARGIN,
            )
            answer: dict[str, Any] = response.json()
            if response.status_code == 200:
                return answer
            leader = answer.get("leader") or {}
            if leader.get("session") != announced:
                announced = leader.get("session")
                _say(f"crossway elect: waiting; {self.name} is led by {leader.get('value')!r}")
            wait = CAMPAIGN_TURN

    async def leave(self) -> None:
        if self.campaigning:
            path = f"/v1/elections/{self.name}"
            with contextlib.suppress(CliFailure):
                await self.plane.call(
                    "DELETE", path, params={"session": self.keeper.id}, accept=(409,)
                )


def _exit(where: str, main: Any) -> None:
    """Run a command's async main and leave with its status; every failure is
    one line on stderr."""
    try:
        code = asyncio.run(main())
    except CliFailure as exc:
        fail(where, str(exc))
    except SessionLost as exc:
        fail(where, f"lost the session, so the command was stopped: {exc}", code=EXIT_LOST)
    except _Interrupted:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


def _seconds(where: str, flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(where, f"{flag}: {exc}", code=2)


def _lost(keeping: asyncio.Future[None]) -> bool:
    return keeping.done() and not keeping.cancelled() and keeping.exception() is not None


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _say(line: str, *, to_stdout: bool = False) -> None:
    """A progress line; on stderr unless asked, so stdout stays COMMAND's."""
    print(line, file=sys.stdout if to_stdout else sys.stderr, flush=True)
