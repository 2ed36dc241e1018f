"""`crossway up`: the control plane, the gateway and the services of a crossway.yaml.

Theory of operation
- Before anything starts: the folder's lock is taken (`UpLock`: one `up`
  per data directory) and every fixed port (control plane, gateway, its
  admin port, services' `port:`) is checked, so a clash is one clear line
  naming the port and its user, with nothing started.
- The control plane is `crossway server`'s own `serve()` running in this
  process and event loop, with the supervisor's routes added
  (`/v1/processes…`) and signals left to us (its `shutdown` event).
- Once it answers, the file's routes, policies and alert rules are applied
  through its HTTP API (every run: the file is the truth for them), and
  config seeds are written only where the key does not exist yet
  (`If-Match: 0`), so edits made at run time survive a restart of `up`.
- Then the gateway, as a supervised child (`crossway gateway`), then the
  services in dependency order, each waiting until the services it depends
  on are healthy (at most their `start_period`; then it starts anyway and
  says so).
- SIGINT or SIGTERM: services stop in reverse dependency order (SIGTERM,
  SIGKILL after `stop_grace`), then the gateway, then the control plane;
  the lock is released and `run_up` returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import httpx2

from crossway.core.errors import CrosswayError
from crossway.server.logs import configure_logging
from crossway.server.run import serve
from crossway.server.settings import ServerSettings
from crossway.up.api import process_routes
from crossway.up.lock import UpLock
from crossway.up.logs import LogHub
from crossway.up.ports import port_is_free
from crossway.up.project import Project, command_line, health_of
from crossway.up.spec import HealthSpec
from crossway.up.supervisor import ProcessSpec, Supervisor

UP = "up"
"""The label of `crossway up`'s own lines on the terminal."""


class UpFailed(CrosswayError):
    """`crossway up` cannot go on; the message says why in one line."""

    code = "up_failed"


class ControlPlaneClient:
    """What `up` asks of its own control plane over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx2.AsyncClient(base_url=url, timeout=10.0, trust_env=False)

    async def passing_ids(self, service: str) -> set[str] | None:
        try:
            response = await self.http.get(f"/v1/services/{service}")
            if response.status_code == 404:
                return set()
            response.raise_for_status()
            return {i["id"] for i in response.json() if i.get("status") == "passing"}
        except (httpx2.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def deregister(self, service: str, instance_id: str) -> None:
        with contextlib.suppress(httpx2.HTTPError):
            await self.http.delete(f"/v1/services/{service}/instances/{instance_id}")

    async def ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx2.HTTPError:
            return False

    async def put(self, what: str, path: str, **kwargs: Any) -> httpx2.Response:
        try:
            response = await self.http.put(path, **kwargs)
        except httpx2.HTTPError as exc:
            raise UpFailed(f"{what}: the control plane did not answer ({exc})") from None
        if response.status_code >= 400 and response.status_code != 412:
            raise UpFailed(f"{what}: {_error_text(response)}")
        return response

    async def close(self) -> None:
        await self.http.aclose()


def _error_text(response: httpx2.Response) -> str:
    try:
        error = response.json()["error"]
        field = error.get("field")
        return f"{field}: {error['message']}" if field else str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"the control plane answered {response.status_code}"


def run_up(project: Project) -> int:
    """Run `project` until SIGINT/SIGTERM; the exit status (0 after a clean stop).
    Raises `UpFailed`/`AlreadyRunning` when it cannot start (nothing is left running)."""
    configure_logging("warning", "text")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(Up(project).run())


class Up:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.logs = LogHub(project.data_dir / "logs")
        self.client = ControlPlaneClient(project.control_url)
        self.supervisor = Supervisor(self.logs, self.client)
        self.stop = asyncio.Event()
        self.lock = UpLock(project.data_dir)

    async def run(self) -> int:
        project = self.project
        self.lock.acquire(
            {
                "control_port": project.control_port,
                "gateway_port": project.gateway_port if project.gateway_enabled else None,
                "file": str(project.file),
            }
        )
        try:
            check_ports(project)
            with _signals(self._on_signal):
                await self._serve()
        finally:
            self.logs.close()
            await self.client.close()
            self.lock.release()
        return 0

    def _on_signal(self, signum: int) -> None:
        if self.stop.is_set():
            self.logs.note(UP, "already stopping; waiting for the services to exit")
            return
        self.logs.note(UP, f"{signal.Signals(signum).name}: stopping everything")
        self.stop.set()

    async def _serve(self) -> None:
        project = self.project
        server_stop = asyncio.Event()
        settings = ServerSettings(
            data_dir=project.data_dir, port=project.control_port, log_level="warning"
        )
        routes = process_routes(self.supervisor, self.logs, project=project.name)
        server = asyncio.create_task(serve(settings, extra=[routes], shutdown=server_stop))
        starting = asyncio.create_task(self._start_everything(server))
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({server, starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done() and starting.exception() is None:
                await asyncio.wait({server, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            starting.cancel()
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await self.supervisor.stop_all()
            server_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await server
        if not starting.cancelled() and starting.exception() is not None:
            raise starting.exception()  # type: ignore[misc]
        self.logs.note(UP, "stopped")

    async def _start_everything(self, server: asyncio.Task[None]) -> None:
        project = self.project
        await self._wait_control_plane(server)
        self.logs.note(UP, f"control plane on {project.control_url} (data in {project.data_dir})")
        await self._seed()
        if project.gateway_enabled:
            self.supervisor.add(gateway_spec(project))
            self.logs.note(UP, f"gateway on http://127.0.0.1:{project.gateway_port}")
        for name in project.order:
            service = project.service(name)
            for dependency in service.depends_on:
                timeout = _start_period(project, dependency)
                if not await self.supervisor.wait_healthy(dependency, timeout):
                    self.logs.note(
                        name, f"starting although {dependency} is not healthy after {timeout:g}s"
                    )
            self.supervisor.add(service_spec(project, name))

    async def _wait_control_plane(self, server: asyncio.Task[None]) -> None:
        for _ in range(600):
            if server.done():
                exc = server.exception()
                raise UpFailed(getattr(exc, "message", None) or str(exc) or "control plane stopped")
            if await self.client.ready():
                return
            await asyncio.sleep(0.05)
        raise UpFailed("the control plane did not become ready within 30s")

    async def _seed(self) -> None:
        spec, put = self.project.spec, self.client.put
        for name, route in spec.routes.items():
            await put(f"routes.{name}", f"/v1/routes/{name}", json=route)
        for name, policy in spec.policies.items():
            await put(f"policies.{name}", f"/v1/policies/{name}", json=policy)
        if spec.alerts is not None:
            await put("alerts", "/v1/alerts/rules", content=json.dumps(spec.alerts).encode())
        for i, seed in enumerate(spec.config):
            content = seed.content
            if seed.file is not None:
                content = (self.project.folder / seed.file).read_text(encoding="utf-8")
            params = {"format": seed.format} if seed.format else {}
            path = f"/v1/config/{seed.namespace}/{seed.group}/{seed.key}"
            await put(
                f"config[{i}]",
                path,
                content=(content or "").encode(),
                params=params,
                headers={"If-Match": "0", "X-Crossway-Author": "crossway-up"},
            )


def check_ports(project: Project) -> None:
    """`UpFailed` naming the first fixed port that something already listens on."""
    wanted: list[tuple[int, str]] = []
    if project.control_port:
        wanted.append((project.control_port, "the control plane"))
    if project.gateway_enabled:
        wanted.append((project.gateway_port, "the gateway"))
        wanted.append((project.admin_port, "the gateway's admin"))
    for name in project.order:
        port = project.service(name).port
        if port is not None:
            wanted.append((port, f"service {name}"))
    for port, what in wanted:
        if not port_is_free(port):
            raise UpFailed(f"port {port} ({what}) is already in use")


def gateway_spec(project: Project) -> ProcessSpec:
    argv = (
        sys.executable,
        "-m",
        "crossway.cli.main",
        "gateway",
        "--control-plane",
        project.control_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(project.gateway_port),
        "--admin-port",
        str(project.admin_port),
    )
    return ProcessSpec(
        service="gateway",
        argv=argv,
        cwd=project.folder,
        fixed_port=project.gateway_port,
        health=HealthSpec(tcp=True, interval=1.0, timeout=1.0, start_period=30.0),
        restart="always",
        stop_grace=10.0,
    )


def service_spec(project: Project, name: str) -> ProcessSpec:
    service = project.service(name)
    sdk_env = {
        "CROSSWAY_URL": project.control_url,
        "CROSSWAY_CACHE_DIR": str(project.data_dir / "cache"),
        # A new replica is found by callers only once its server listens
        # (crossway.lifespan waits for the port before registering).
        "CROSSWAY_REGISTER_WHEN_LISTENING": "1",
    }
    if service.zone:
        sdk_env["CROSSWAY_ZONE"] = service.zone
    if service.labels:
        sdk_env["CROSSWAY_LABELS"] = ",".join(f"{k}={v}" for k, v in service.labels.items())
    return ProcessSpec(
        service=name,
        argv=tuple(command_line(service)),
        cwd=project.cwd(name),
        env=dict(service.env),
        replicas=service.replicas,
        fixed_port=service.port,
        port_range=service.port_range_bounds(),
        listen=service.listen,
        health=health_of(service),
        restart=service.restart,
        stop_grace=service.stop_grace,
        depends_on=tuple(service.depends_on),
        sdk_env=sdk_env,
    )


def _start_period(project: Project, name: str) -> float:
    health = health_of(project.service(name))
    return health.start_period if health is not None else 5.0


@contextlib.contextmanager
def _signals(handler: Any) -> Any:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handler, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    return uvloop.new_event_loop
