"""The supervisor: replicas of each service as child processes, kept running.

Theory of operation
- A service is a `ProcessSpec` (resolved from crossway.yaml, or built for
  the gateway) and a list of `Replica`s. Each replica is driven by one task,
  `_run`: spawn the process in its own session (so its whole process group
  can be signalled), copy its stdout and stderr line by line to the
  `LogHub`, probe its health until it exits, then ask `policy.after_exit`
  whether and when to start it again. A restart is a new generation of the
  same replica: a new port and a new instance id (`orders-1`, then
  `orders-1-2`), so a registry entry of the dead process is never taken
  for the new one; the dead one's entry is deleted from the registry at once
  rather than left to its lease.
- A command that cannot be started (not found, not executable) is reported
  once per service, shown as `crashed`, and retried with the same backoff as
  a crash: fixing the file on disk (a missing venv, a typo in a script
  name…) brings the service up without restarting `crossway up`.
- Stopping a replica (`_stop`) is the only way one ends on purpose: mark it
  stopping (so it is not restarted), optionally remove it from the registry
  and wait for the gateway to drop it, SIGTERM its process group, SIGKILL
  the group after `stop_grace`.
- A rolling restart (`restart`) replaces replicas one at a time with a
  surge: start the new generation on a new port, wait until it is healthy
  and (for a service that registers itself) listed as passing in the
  registry, then stop one old replica as above. A replica that does not
  become healthy within its `start_period` ends the roll and is stopped;
  the old ones keep serving.
- Everything runs on the event loop of `crossway up`; the registry is
  reached through the small `RegistryClient` protocol so tests can fake it.

Invariants: a replica has at most one live process; every process started
is in `_processes` until it has been reaped and its group killed, so
`stop_all` leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crossway.core.errors import Conflict, InvalidArgument, NotFound
from crossway.up.health import Prober
from crossway.up.logs import LogHub
from crossway.up.policy import Backoff, RestartMode, State, after_exit, describe_exit
from crossway.up.ports import PortAllocator, PortUnavailable
from crossway.up.project import substitute
from crossway.up.spec import HealthSpec

log = logging.getLogger("crossway.up")

MAX_REPLICAS = 64
DRAIN_SECONDS = 1.0
"""How long a deregistered replica keeps running so gateways stop sending to it."""
UNHEALTHY_AFTER = 3
"""Consecutive failed checks that make a healthy replica unhealthy."""


class RegistryClient(Protocol):
    async def passing_ids(self, service: str) -> set[str] | None:
        """Ids of the service's passing instances; None when the registry cannot be read."""

    async def deregister(self, service: str, instance_id: str) -> None:
        """Remove the instance (no error when it is not there)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessSpec:
    service: str
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    fixed_port: int | None = None
    port_range: tuple[int, int] | None = None
    listen: bool = True
    health: HealthSpec | None = None
    restart: RestartMode = "on-failure"
    stop_grace: float = 10.0
    depends_on: tuple[str, ...] = ()
    sdk_env: dict[str, str] = field(default_factory=dict)
    """CROSSWAY_* variables shared by every replica (empty for the gateway)."""


@dataclass(eq=False, kw_only=True)
class Replica:
    service: str
    index: int
    generation: int = 1
    port: int | None = None
    pid: int | None = None
    state: State = "starting"
    restarts: int = 0
    started_at: float | None = None
    last_exit: dict[str, Any] | None = None
    healthy_since: float | None = None
    failures: int = 0
    stopping: bool = False
    healthy: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def instance_id(self) -> str:
        base = f"{self.service}-{self.index}"
        return base if self.generation == 1 else f"{base}-{self.generation}"

    @property
    def label(self) -> str:
        return f"{self.service}.{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "replica": self.index,
            "instance_id": self.instance_id,
            "pid": self.pid,
            "port": self.port,
            "state": self.state,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_exit": self.last_exit,
        }


@dataclass(eq=False)
class Group:
    spec: ProcessSpec
    replicas: list[Replica] = field(default_factory=list)
    rolling: asyncio.Task[None] | None = None
    reported_missing: bool = False


class Supervisor:
    def __init__(
        self,
        logs: LogHub,
        registry: RegistryClient,
        *,
        ports: PortAllocator | None = None,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        drain: float = DRAIN_SECONDS,
    ) -> None:
        self.logs = logs
        self.registry = registry
        self.ports = ports or PortAllocator()
        self.backoff = backoff or Backoff()
        self.monotonic = monotonic
        self.wall = wall
        self.drain = drain
        self.groups: dict[str, Group] = {}
        self.order: list[str] = []
        self._generations: dict[tuple[str, int], int] = {}
        self._closing = False
        self.prober = Prober()

    # The state, as GET /v1/processes shows it.

    def processes(self, service: str | None = None) -> list[dict[str, Any]]:
        names = [service] if service is not None else self.order
        return [r.to_json() for n in names for r in self._group(n).replicas]

    def _group(self, service: str) -> Group:
        group = self.groups.get(service)
        if group is None:
            raise NotFound(f"no process named {service!r} is supervised here", field="service")
        return group

    # Starting.

    def add(self, spec: ProcessSpec) -> None:
        """Start supervising `spec` with its replicas (not waiting for health)."""
        if self._closing:
            return
        self.groups[spec.service] = Group(spec)
        self.order.append(spec.service)
        for index in range(1, spec.replicas + 1):
            self._launch(self.groups[spec.service], index)

    async def wait_healthy(self, service: str, timeout: float) -> bool:
        """True once every replica of `service` is healthy, False after `timeout`."""
        group = self._group(service)
        try:
            async with asyncio.timeout(timeout):
                for replica in list(group.replicas):
                    await replica.healthy.wait()
        except TimeoutError:
            return False
        return True

    def _launch(self, group: Group, index: int) -> Replica:
        key = (group.spec.service, index)
        generation = self._generations.get(key, 0) + 1
        self._generations[key] = generation
        replica = Replica(service=group.spec.service, index=index, generation=generation)
        group.replicas.append(replica)
        group.replicas.sort(key=lambda r: (r.index, r.generation))
        replica.task = asyncio.get_running_loop().create_task(
            self._run(group, replica), name=f"crossway-up {replica.label}"
        )
        return replica

    # One replica's life.

    async def _run(self, group: Group, replica: Replica) -> None:
        spec = group.spec
        while True:
            try:
                code = await self._one_process(group, replica)
            except Exception as exc:  # a bug here must not leave the replica unsupervised
                log.exception("supervising %s failed", replica.label)
                self.logs.note(spec.service, f"{replica.label}: internal error: {exc!r}")
                code = 127
            replica.last_exit = {"code": code, "at": self.wall()}
            replica.pid, replica.process = None, None
            replica.healthy.clear()
            self.ports.release(replica.port)
            replica.port = None
            if spec.sdk_env and not replica.stopping:
                await self._forget(replica)
            decision = after_exit(
                code=code,
                mode=spec.restart,
                stopping=replica.stopping or self._closing,
                failures=replica.failures,
                healthy_since=replica.healthy_since,
                now=self.monotonic(),
                backoff=self.backoff,
            )
            replica.healthy_since = None
            if not decision.restart:
                replica.state = "stopped" if replica.stopping or code == 0 else "crashed"
                if not replica.stopping:
                    self.logs.note(spec.service, f"{replica.label} {describe_exit(code)}")
                return
            replica.failures = decision.failures
            replica.restarts += 1
            if replica.state != "crashed":
                replica.state = "restarting"
            self.logs.note(
                spec.service,
                f"{replica.label} {describe_exit(code)}; restarting in {decision.delay:g}s",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replica.wake.wait(), decision.delay)
            if replica.stopping or self._closing:
                replica.state = "stopped"
                return
            key = (spec.service, replica.index)
            replica.generation = self._generations[key] = self._generations[key] + 1

    async def _one_process(self, group: Group, replica: Replica) -> int:
        """Run one process of `replica` to its end; its exit code (127: could not start)."""
        spec = group.spec
        try:
            replica.port = self._port_for(spec, replica)
        except PortUnavailable as exc:
            self.logs.note(spec.service, f"cannot start {replica.label}: {exc}")
            replica.state = "crashed"
            return 127
        values = {"SERVICE": spec.service, "REPLICA": str(replica.index)}
        if replica.port is not None:
            values["PORT"] = str(replica.port)
        try:
            process = await asyncio.create_subprocess_exec(
                *(substitute(arg, values) for arg in spec.argv),
                cwd=spec.cwd,
                env=self._environment(spec, replica, values),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                limit=1 << 20,
            )
        except OSError as exc:
            if not group.reported_missing:
                group.reported_missing = True
                self.logs.note(spec.service, f"cannot start {spec.argv[0]!r}: {_reason(exc)}")
            replica.state = "crashed"
            return 127
        replica.process, replica.pid = process, process.pid
        if replica.stopping:  # stopped while it was being spawned
            _kill_group(process.pid, signal.SIGTERM)
        replica.started_at = self.wall()
        replica.state = "starting"
        group.reported_missing = False
        readers = [
            asyncio.create_task(self._copy_lines(spec.service, replica, stream))
            for stream in (process.stdout, process.stderr)
            if stream is not None
        ]
        checker = asyncio.create_task(self._watch_health(spec, replica))
        try:
            code = await process.wait()
        finally:
            checker.cancel()
            _kill_group(process.pid, signal.SIGKILL)  # what it left behind in its group
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 2.0)
            for reader in readers:
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
        return code

    def _port_for(self, spec: ProcessSpec, replica: Replica) -> int | None:
        if not spec.listen:
            return None
        return self.ports.allocate(
            replica.instance_id, fixed=spec.fixed_port, port_range=spec.port_range
        )

    def _environment(
        self, spec: ProcessSpec, replica: Replica, values: dict[str, str]
    ) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PORT", None)
        # The interpreter running `up` first on PATH: `python` and `uvicorn` in a command
        # are this virtualenv's even when it is not activated (`.venv/bin/crossway up`).
        tools = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([tools, env.get("PATH", os.defpath)])
        env.update({key: substitute(value, values) for key, value in spec.env.items()})
        env["PYTHONUNBUFFERED"] = "1"
        if spec.sdk_env:
            env.update(spec.sdk_env)
            env["CROSSWAY_SERVICE"] = spec.service
            env["CROSSWAY_INSTANCE_ID"] = replica.instance_id
            env["CROSSWAY_ADDRESS"] = "127.0.0.1"
            if replica.port is not None:
                env["CROSSWAY_PORT"] = env["PORT"] = str(replica.port)
        return env

    async def _copy_lines(
        self, service: str, replica: Replica, stream: asyncio.StreamReader
    ) -> None:
        label = str(replica.index)
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: show it in pieces
                raw = await stream.read(1 << 20)
            if not raw:
                return
            self.logs.line(service, label, raw.decode("utf-8", "replace"))

    async def _watch_health(self, spec: ProcessSpec, replica: Replica) -> None:
        health = spec.health
        if health is None or replica.port is None:
            self._mark_healthy(replica)
            return
        started = self.monotonic()
        failed = 0
        while True:
            ok = await self.prober.check(health, replica.port)
            if ok:
                failed = 0
                self._mark_healthy(replica)
            elif replica.state == "healthy":
                failed += 1
                if failed >= UNHEALTHY_AFTER:
                    replica.state, replica.healthy_since = "unhealthy", None
                    replica.healthy.clear()
                    self.logs.note(spec.service, f"{replica.label} is unhealthy")
            elif replica.state == "starting" and self.monotonic() - started > health.start_period:
                replica.state = "unhealthy"
                self.logs.note(
                    spec.service,
                    f"{replica.label} is not healthy {health.start_period:g}s after it started",
                )
            # Before the first success, look often: start-up time is what people wait for.
            await asyncio.sleep(health.interval if replica.healthy.is_set() else 0.1)

    def _mark_healthy(self, replica: Replica) -> None:
        if replica.state != "healthy":
            replica.state = "healthy"
            replica.healthy_since = self.monotonic()
            replica.healthy.set()

    async def _forget(self, replica: Replica) -> None:
        """Delete a dead replica's registry entry rather than wait for its lease."""
        with contextlib.suppress(Exception):
            await self.registry.deregister(replica.service, replica.instance_id)

    # Stopping.

    async def _stop(self, group: Group, replica: Replica, *, deregister: bool) -> None:
        """Stop `replica` for good (see the module header); returns when it is gone."""
        replica.stopping = True
        replica.wake.set()
        process = replica.process
        if process is not None and process.returncode is None:
            if deregister and group.spec.sdk_env:
                await self._forget(replica)
                await asyncio.sleep(self.drain)
            _kill_group(process.pid, signal.SIGTERM)
        if replica.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(replica.task), group.spec.stop_grace)
            except TimeoutError:
                process = replica.process
                if process is not None:
                    _kill_group(process.pid, signal.SIGKILL)
                await replica.task
        replica.state = "stopped"
        if replica in group.replicas:
            group.replicas.remove(replica)

    async def stop_all(self) -> None:
        """Stop every service, dependents first, the gateway last; nothing is restarted after."""
        self._closing = True
        for name in reversed(self.order):
            group = self.groups[name]
            if group.rolling is not None:
                group.rolling.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await group.rolling
            await asyncio.gather(
                *(self._stop(group, r, deregister=False) for r in list(group.replicas))
            )
        await self.prober.close()

    # Scaling and rolling restarts.

    async def scale(self, service: str, replicas: int) -> list[dict[str, Any]]:
        """Run `replicas` replicas of `service`: new ones get the next indexes; the
        highest indexes are stopped gracefully. Returns the service's processes."""
        group = self._user_group(service)
        if not 0 <= replicas <= MAX_REPLICAS:
            raise InvalidArgument(
                f"replicas must be between 0 and {MAX_REPLICAS}", field="replicas"
            )
        if replicas > 1 and group.spec.fixed_port is not None:
            raise InvalidArgument(
                f"{service} has a fixed port ({group.spec.fixed_port}) and runs one replica; "
                "use port_range to scale it",
                field="replicas",
            )
        live = sorted({r.index for r in group.replicas})
        for index in range(len(live) + 1, replicas + 1):
            self._launch(group, index)
        surplus = [r for r in group.replicas if r.index > replicas]
        await asyncio.gather(*(self._stop(group, r, deregister=True) for r in surplus))
        self.logs.note(service, f"scaled to {replicas} replica(s)")
        return self.processes(service)

    def restart(self, service: str) -> None:
        """Start a rolling restart of `service` in the background (Conflict if one runs)."""
        group = self._user_group(service)
        if group.rolling is not None and not group.rolling.done():
            raise Conflict(f"a rolling restart of {service} is already in progress")
        group.rolling = asyncio.get_running_loop().create_task(self._roll(group))

    def _user_group(self, service: str) -> Group:
        group = self._group(service)
        if self._closing:
            raise Conflict("crossway up is shutting down")
        return group

    async def _roll(self, group: Group) -> None:
        service = group.spec.service
        self.logs.note(service, "rolling restart: one replica at a time")
        registers = bool(group.spec.sdk_env) and await self._registers(group)
        for old in sorted(group.replicas, key=lambda r: r.index):
            if old not in group.replicas or old.stopping:
                continue
            if group.spec.fixed_port is not None:  # no second port to surge onto
                await self._stop(group, old, deregister=True)
                new = self._launch(group, old.index)
                await self._ready(group, new, registers)
                continue
            new = self._launch(group, old.index)
            if not await self._ready(group, new, registers):
                self.logs.note(service, f"{new.instance_id} did not become ready; restart stopped")
                await self._stop(group, new, deregister=True)
                return
            await self._stop(group, old, deregister=True)
        self.logs.note(service, "rolling restart done")

    async def _registers(self, group: Group) -> bool:
        """Whether the service's replicas register themselves (any one listed)."""
        ids = await self.registry.passing_ids(group.spec.service)
        return bool(ids and ids & {r.instance_id for r in group.replicas})

    async def _ready(self, group: Group, replica: Replica, registers: bool) -> bool:
        """Wait until `replica` is healthy and, if `registers`, passing in the registry."""
        health = group.spec.health
        limit = health.start_period if health is not None else 30.0
        deadline = self.monotonic() + limit
        try:
            async with asyncio.timeout(limit):
                await replica.healthy.wait()
                while registers and self.monotonic() < deadline:
                    ids = await self.registry.passing_ids(group.spec.service)
                    if ids is not None and replica.instance_id in ids:
                        return True
                    await asyncio.sleep(0.2)
        except TimeoutError:
            return False
        return not registers


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a function for the child (between fork and exec) asking the
    kernel to SIGTERM it when `crossway up` dies, however it dies: a SIGKILLed
    `up` must not leave services holding their ports. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    set_death_signal, parent = 1, os.getpid()  # PR_SET_PDEATHSIG

    def arrange() -> None:
        prctl(set_death_signal, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


_die_with_parent = _parent_death_signal()


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "command not found"
    if isinstance(exc, PermissionError):
        return "permission denied (is it executable?)"
    return exc.strerror or str(exc)
