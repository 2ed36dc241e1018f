"""The gateway's configuration snapshot and the YAML file it can come from.

    version: "2026-11-25"          # optional; default: a digest of the file
    routes:
      orders:                      # the route's name, as in PUT /v1/routes/orders
        match: {path_prefix: /orders}
        backends:
          - {service: orders, weight: 90}
          - {service: orders-canary, weight: 10}
        timeout: 5s
        retries: {attempts: 2}
    policies:                      # optional; as PUT /v1/policies/{service}
      orders: {bulkhead: {max_concurrent: 100}}
      default: {breaker: {failures: 5}}
    redis_url: redis://127.0.0.1:6379/0   # optional; for global rate limits
    access_log: sample:0.1         # optional; off | full | sample:R (--access-log wins)

Theory of operation
-------------------
A `GatewayConfig` is immutable: its routes, the call policies of the
upstream services (crossway.traffic.policy: breakers, concurrency limits,
outlier ejection), a version that tells operators which configuration is
serving (`/config_dump`), and the `RouteTable` compiled once when the
snapshot is made. The engine swaps whole snapshots,
so a request sees one configuration from start to end.

`load_config(path)` reads the file with the same route schema as the control
plane. Errors name the file, the line and the field: the YAML is parsed
twice — to plain data for decoding, and to nodes that keep their line marks
— and the JSON path of a validation error (`$.backends[1].weight` within
route `orders`) is walked down the node tree to the line it came from.

Invariants
----------
- A `GatewayConfig` holds only valid routes and a table compiled from them.
- `load_config` either returns a whole configuration or raises
  `ConfigFileError`; it never returns part of a file.
- A key given twice in one mapping is an error (YAML would keep the last).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import yaml

from crossway.core.errors import InvalidArgument
from crossway.core.validation import field_of
from crossway.proxy.routes.model import Route, check_route_name, route_from_object
from crossway.proxy.routes.table import RouteTable
from crossway.registry.model import check_name
from crossway.traffic.policy import CallPolicy

_TOP_LEVEL = frozenset({"version", "routes", "policies", "redis_url", "access_log"})
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_AT_SUFFIX = re.compile(r" - at `\$[^`]*`$")


class ConfigFileError(InvalidArgument):
    """A configuration file that cannot be used; `file`, `line` and `field`
    say where (line is 1-based, 0 when unknown)."""

    code = "invalid_config"


@dataclass(frozen=True)
class GatewayConfig:
    """One configuration of the gateway (see the module header). `previous`,
    the configuration this one replaces, lends its compiled routes to the
    routes that did not change."""

    routes: Mapping[str, Route]
    version: str = ""
    table: RouteTable = field(init=False, repr=False, compare=False)
    _: KW_ONLY
    policies: Mapping[str, CallPolicy] = field(default_factory=dict)
    redis_url: str | None = None
    access_log: str | None = None
    previous: InitVar[GatewayConfig | None] = None

    def __post_init__(self, previous: GatewayConfig | None) -> None:
        frozen = MappingProxyType(dict(self.routes))
        reuse = previous.table if previous is not None else None
        object.__setattr__(self, "routes", frozen)
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))
        object.__setattr__(self, "table", RouteTable(frozen, reuse=reuse))


EMPTY = GatewayConfig({}, "empty")


def load_config(path: str | Path) -> GatewayConfig:
    """The configuration in the YAML file at `path`.

    Raises `ConfigFileError` (file, line, field) when the file cannot be read,
    is not YAML, or holds an invalid route; `OSError` is turned into one too.
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{where}: cannot read: {exc}", file=where, line=0) from None
    return parse_config(text, source=where)


def parse_config(text: str, *, source: str = "<config>") -> GatewayConfig:
    """The configuration in YAML `text`; errors as `load_config`, naming `source`."""
    data, root = _parse_yaml(text, source)
    _refuse_duplicate_keys(root, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(source, root, "$", "the file must hold a mapping with `routes`")
    for key in data:
        if key not in _TOP_LEVEL:
            raise _error(source, root, f"$.{key}", "unknown field (expected version, routes)")
    routes = _routes(data.get("routes") or {}, source, root)
    policies = _policies(data.get("policies") or {}, source, root)
    redis_url = data.get("redis_url")
    if redis_url is not None and not (isinstance(redis_url, str) and redis_url.strip()):
        raise _error(source, root, "$.redis_url", "must be a URL such as redis://host:6379/0")
    access_log = data.get("access_log")
    if access_log is not None and not _is_access_log(access_log):
        raise _error(source, root, "$.access_log", "must be off, full or sample:R (0 < R <= 1)")
    version = data.get("version")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return GatewayConfig(
        routes,
        str(version) if version is not None else digest,
        policies=policies,
        redis_url=redis_url,
        access_log=access_log,
    )


def _is_access_log(value: object) -> bool:
    from crossway.proxy.telemetry import parse_access_log  # the one parser of the mode

    if not isinstance(value, str):
        return False
    try:
        parse_access_log(value)
    except InvalidArgument:
        return False
    return True


def _parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or "not valid YAML"
        raise ConfigFileError(
            f"{source}:{line}: not valid YAML: {problem}", file=source, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{source}: not valid YAML: {exc}", file=source, line=0) from None


def _refuse_duplicate_keys(root: yaml.Node | None, source: str) -> None:
    """YAML keeps the last of two equal keys without a word; a second route
    of the same name is far more likely a copy-paste slip than an intent."""
    stack: list[tuple[yaml.Node, str]] = [(root, "$")] if root is not None else []
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: set[object] = set()
            for key, value in node.value:
                at = f"{path}.{key.value}"
                if key.value in seen:
                    line = key.start_mark.line + 1
                    shown = at.removeprefix("$.")
                    raise ConfigFileError(
                        f"{source}:{line}: {shown}: duplicate key", file=source, line=line, field=at
                    )
                seen.add(key.value)
                stack.append((value, at))


def _routes(raw: object, source: str, root: yaml.Node | None) -> dict[str, Route]:
    if not isinstance(raw, dict):
        raise _error(source, root, "$.routes", "must map route names to routes")
    routes_node = _child(root, "routes", None)[0] if root is not None else None
    routes: dict[str, Route] = {}
    for name, body in raw.items():
        try:
            check_route_name(str(name), "$")
            routes[str(name)] = route_from_object(body)
        except InvalidArgument as exc:
            raise _route_error(source, routes_node, str(name), exc) from None
    return routes


def _policies(raw: object, source: str, root: yaml.Node | None) -> dict[str, CallPolicy]:
    if not isinstance(raw, dict):
        raise _error(source, root, "$.policies", "must map service names to call policies")
    policies: dict[str, CallPolicy] = {}
    for name, body in raw.items():
        at = f"$.policies.{name}"
        try:
            check_name(str(name), "name")
        except InvalidArgument as exc:
            raise _error(source, root, at, exc.message.removeprefix("name: ")) from None
        try:
            policy = msgspec.convert(body if body is not None else {}, CallPolicy)
        except msgspec.ValidationError as exc:
            inner = field_of(str(exc))
            message = _AT_SUFFIX.sub("", str(exc))
            raise _error(source, root, at + inner.removeprefix("$"), message) from None
        except InvalidArgument as exc:
            inner = str(exc.details.get("field", "$"))
            message = exc.message.removeprefix(f"{inner.removeprefix('$.')}: ")
            raise _error(source, root, at + inner.removeprefix("$"), message) from None
        policies[str(name)] = policy
    return policies


def _route_error(
    source: str, routes_node: yaml.Node | None, name: str, exc: InvalidArgument
) -> ConfigFileError:
    inner = str(exc.details.get("field", "$"))
    node, line = _child(routes_node, name, None) if routes_node is not None else (None, 0)
    line = _walk(node, inner, line)
    message = _AT_SUFFIX.sub("", exc.message).removeprefix(f"{inner.removeprefix('$.')}: ")
    shown = f"routes.{name}" + inner.removeprefix("$")
    where = f"{source}:{line}" if line else source
    field_path = f"$.routes.{name}" + inner.removeprefix("$")
    return ConfigFileError(f"{where}: {shown}: {message}", file=source, line=line, field=field_path)


def _error(source: str, root: yaml.Node | None, path: str, message: str) -> ConfigFileError:
    line = line_of(root, path)
    shown = path.removeprefix("$.") or "$"
    where = f"{source}:{line}" if line else source
    return ConfigFileError(f"{where}: {shown}: {message}", file=source, line=line, field=path)


def line_of(root: yaml.Node | None, path: str) -> int:
    """The 1-based line of the deepest node of `path` (`$.a[1].b`) present
    in the YAML node tree (a missing field points at its parent), 0 if none."""
    return _walk(root, path, root.start_mark.line + 1 if root is not None else 0)


def _walk(node: yaml.Node | None, path: str, line: int) -> int:
    for name, index in _STEP.findall(path.removeprefix("$")):
        if node is None:
            break
        node, at = _child(node, name, int(index) if index else None)
        line = at or line
    return line


def _child(node: yaml.Node, name: str, index: int | None) -> tuple[yaml.Node | None, int]:
    if index is not None and isinstance(node, yaml.SequenceNode):
        if index < len(node.value):
            child: yaml.Node = node.value[index]
            return child, child.start_mark.line + 1
        return None, 0
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == name:
                return value, key.start_mark.line + 1
    return None, 0
