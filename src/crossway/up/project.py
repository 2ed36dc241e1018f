"""A `crossway.yaml` resolved against its folder and the command line: what `up` runs.

`Project` is plain data: absolute paths, the ports of the control plane and
the gateway after the flags' overrides, and the services in start order
(each after the services it depends on, otherwise in file order).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from crossway.up.load import load_file
from crossway.up.spec import HealthSpec, ServiceSpec, UpFile


@dataclass(frozen=True, kw_only=True, slots=True)
class Overrides:
    """Command-line flags that win over the file."""

    control_port: int | None = None
    gateway_port: int | None = None
    admin_port: int | None = None
    data_dir: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Project:
    file: Path
    folder: Path
    name: str
    spec: UpFile
    control_port: int
    data_dir: Path
    gateway_enabled: bool
    gateway_port: int
    admin_port: int
    order: tuple[str, ...] = field(default=())

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def service(self, name: str) -> ServiceSpec:
        return self.spec.services[name]

    def cwd(self, name: str) -> Path:
        return (self.folder / self.service(name).cwd).resolve()


def load_project(file: Path, overrides: Overrides = Overrides()) -> Project:
    """Load and resolve `file` (`UpFileError` for any problem in it)."""
    file = file.resolve()
    spec = load_file(file)
    folder = file.parent
    data_dir = overrides.data_dir or folder / spec.control_plane.data_dir
    return Project(
        file=file,
        folder=folder,
        name=spec.name or folder.name,
        spec=spec,
        control_port=_pick(overrides.control_port, spec.control_plane.port),
        data_dir=data_dir.resolve(),
        gateway_enabled=spec.gateway.enabled,
        gateway_port=_pick(overrides.gateway_port, spec.gateway.port),
        admin_port=_pick(overrides.admin_port, spec.gateway.admin_port),
        order=tuple(start_order({n: s.depends_on for n, s in spec.services.items()})),
    )


def _pick(override: int | None, value: int) -> int:
    return value if override is None else override


def start_order(dependencies: dict[str, list[str]]) -> list[str]:
    """Names in an order where each comes after its dependencies, otherwise
    keeping the mapping's order. The graph must be acyclic (the loader checks)."""
    done: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        placed.add(name)
        for dependency in dependencies.get(name, []):
            if dependency in dependencies:
                place(dependency)
        done.append(name)

    for name in dependencies:
        place(name)
    return done


def stop_order(order: tuple[str, ...]) -> list[str]:
    """Dependents before what they depend on."""
    return list(reversed(order))


def command_line(service: ServiceSpec) -> list[str]:
    """The service's command as arguments (a string is split as a shell would)."""
    if isinstance(service.command, str):
        return shlex.split(service.command)
    return list(service.command)


def substitute(text: str, values: dict[str, str]) -> str:
    """`${PORT}`, `${REPLICA}` and `${SERVICE}` replaced; anything else kept as written."""
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def health_of(service: ServiceSpec) -> HealthSpec | None:
    """The readiness check in force: the file's, else a TCP check when the
    service listens, else none."""
    if not service.listen:
        return None
    return service.health or HealthSpec(tcp=True)
