"""The `crossway.yaml` document: pydantic models, validated shape only.

The models say what each field may hold (types, ranges, mutually exclusive
fields); `crossway.up.load` turns a file into a validated `UpFile` and maps
every problem back to its line, and `crossway.up.project` resolves the
document against the file's folder (paths, ports, start order). The JSON
Schema committed in `schemas/crossway.schema.json` is `json_schema()`.

Durations are written as in the rest of Crossway (`500ms`, `10s`, `1m30s`,
or a bare number of seconds) and held as float seconds.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from crossway.core.durations import parse_duration

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
RESERVED_NAMES = frozenset({"gateway"})
"""Names the supervisor uses for its own processes (GET /v1/processes)."""


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a duration such as 500ms, 10s or 1m30s")
    return parse_duration(value)


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*([0-9.]+\s*(ms|s|m|h)?\s*)+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 500ms, 10s, 1m30s, or a number of seconds.",
        }
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=False, frozen=True, use_attribute_docstrings=True
    )


class ControlPlaneSpec(Strict):
    port: Annotated[int, Field(ge=0, le=65535)] = 7700
    """0: any free port."""
    data_dir: str = ".crossway"
    """Relative to the file's folder; the SQLite store, logs and the lock live here."""


class GatewaySpec(Strict):
    enabled: bool = True
    port: Port = 7780
    admin_port: Port = 7790


class HealthSpec(Strict):
    http: str | None = None
    """GET http://127.0.0.1:${PORT}<path> must answer 2xx."""
    tcp: bool | None = None
    """The port accepts a connection."""
    interval: Duration = 1.0
    timeout: Duration = 1.0
    start_period: Duration = 30.0
    """How long a new replica may take to become healthy."""

    @field_validator("http")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be a path starting with /, e.g. /healthz")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> HealthSpec:
        if self.http is not None and self.tcp:
            raise ValueError("give either http or tcp, not both")
        for name in ("interval", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        return self


Command = Annotated[
    str | list[str],
    Field(description="A command line (split like a shell would) or a list of arguments."),
]


class ServiceSpec(Strict):
    command: Command
    cwd: str = "."
    env: dict[str, str] = {}
    replicas: Annotated[int, Field(ge=1)] = 1
    port: Port | None = None
    port_range: Annotated[str | None, Field(pattern=r"^\d+-\d+$")] = None
    health: HealthSpec | None = None
    labels: dict[str, str] = {}
    zone: str | None = None
    depends_on: list[str] = []
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    listen: bool = True
    stop_grace: Duration = 10.0

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | list[str]) -> str | list[str]:
        if (value.strip() if isinstance(value, str) else value) in ("", []):
            raise ValueError("must not be empty")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: object) -> object:
        # YAML reads `DEBUG: 1` as a number; environment values are strings.
        if isinstance(value, dict):
            return {k: _env_text(v) for k, v in value.items()}
        return value

    @field_validator("port_range")
    @classmethod
    def _range(cls, value: str | None) -> str | None:
        if value is not None:
            low, high = (int(part) for part in value.split("-"))
            if not 1 <= low <= high <= 65535:
                raise ValueError("must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        if self.port is not None and self.port_range is not None:
            raise ValueError("give either port or port_range, not both")
        if self.port is not None and self.replicas > 1:
            raise ValueError("a fixed port only works with replicas: 1 (use port_range)")
        if not self.listen and (self.port, self.port_range, self.health) != (None, None, None):
            raise ValueError("listen: false takes no port, port_range or health")
        return self

    def port_range_bounds(self) -> tuple[int, int] | None:
        if self.port_range is None:
            return None
        low, high = (int(part) for part in self.port_range.split("-"))
        return low, high


def _env_text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class ConfigSeed(Strict):
    namespace: str = "default"
    group: str
    key: str
    file: str | None = None
    content: str | None = None
    format: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ConfigSeed:
        if (self.file is None) == (self.content is None):
            raise ValueError("give exactly one of file or content")
        return self


class UpFile(Strict):
    """The whole `crossway.yaml`."""

    version: Literal[1]
    name: str | None = None
    control_plane: ControlPlaneSpec = ControlPlaneSpec()
    gateway: GatewaySpec = GatewaySpec()
    services: dict[str, ServiceSpec]
    routes: dict[str, dict[str, Any]] = {}
    """name -> route document, the body of PUT /v1/routes/{name}."""
    policies: dict[str, dict[str, Any]] = {}
    """service -> policy document, the body of PUT /v1/policies/{service}."""
    config: list[ConfigSeed] = []
    alerts: dict[str, Any] | None = None
    """The body of PUT /v1/alerts/rules."""

    @field_validator("services")
    @classmethod
    def _names(cls, value: dict[str, ServiceSpec]) -> dict[str, ServiceSpec]:
        if not value:
            raise ValueError("must name at least one service")
        return value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `crossway.yaml` (what `schemas/crossway.schema.json` holds)."""
    schema = UpFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "crossway.yaml"
    services = schema["properties"]["services"]
    services["propertyNames"] = {"pattern": f"^{SERVICE_NAME.pattern}$"}
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
