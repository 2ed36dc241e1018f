"""Reading `crossway.yaml`: every problem reported with its line, column and path.

Theory of operation
- The text is parsed twice by PyYAML from the same string: `compose` keeps
  the node tree with each node's position, `safe_load` gives plain data.
  The data is validated by the pydantic models of `crossway.up.spec`, then
  checked for what the models cannot see alone (service names, unknown or
  circular dependencies, one port claimed twice, seed files that do not
  exist).
- Each problem carries the path of the field (`services.orders.replicas`),
  which is walked down the node tree to the node's position. A path that
  leaves the tree (a missing field) stops at the deepest node that exists,
  so a missing field points at the mapping that should hold it.
- Problems are collected, not raised one at a time: a user fixes the file
  in one pass. `load_file` raises `UpFileError` with all of them, sorted by
  position; its `str()` is one `file:line:col: path: message` line each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.up.spec import RESERVED_NAMES, SERVICE_NAME, UpFile

PathPart = str | int


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    column: int
    path: str
    message: str

    def render(self, file: str) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{file}:{self.line}:{self.column}: {where}{self.message}"


class UpFileError(CrosswayError):
    """`crossway.yaml` cannot be used; `problems` says every reason."""

    code = "invalid_file"
    status = 400

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        self.file = file
        self.problems = sorted(problems, key=lambda p: (p.line, p.column, p.path))
        super().__init__("\n".join(p.render(file) for p in self.problems))


def load_file(path: Path) -> UpFile:
    """The validated document in `path`; `UpFileError` listing every problem."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UpFileError(shown, [Problem(1, 1, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UpFileError(shown, [Problem(1, 1, "", f"cannot read the file: {exc}")]) from None
    return load_text(text, file=shown, folder=path.parent)


def load_text(text: str, *, file: str = "crossway.yaml", folder: Path | None = None) -> UpFile:
    """Validate `text` as a `crossway.yaml` (seed files resolved against `folder`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = Problem(line, column, "", f"not valid YAML: {exc.problem}")
        raise UpFileError(file, [problem]) from None
    except yaml.YAMLError as exc:
        raise UpFileError(file, [Problem(1, 1, "", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict) or root is None:
        raise UpFileError(file, [Problem(1, 1, "", "expected a mapping with version: 1")])
    locate = Locator(root)
    graph = service_graph_problems(data.get("services"))
    try:
        spec = UpFile.model_validate(data)
    except ValidationError as exc:
        problems = [locate.problem_for(e) for e in exc.errors()]
        problems += [locate.problem(path, message) for path, message in graph]
        raise UpFileError(file, _dedupe(problems)) from None
    checked = graph + semantic_problems(spec, folder)
    if checked:
        raise UpFileError(file, [locate.problem(path, message) for path, message in checked])
    return spec


def service_graph_problems(services: object) -> list[tuple[list[PathPart], str]]:
    """Service names and dependencies, checked on the raw data so that they are
    reported together with the models' problems."""
    if not isinstance(services, dict):
        return []
    problems: list[tuple[list[PathPart], str]] = []
    graph: dict[str, list[str]] = {}
    for name, service in services.items():
        where: list[PathPart] = ["services", name]
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            problems.append((where, "a service name is lowercase letters, digits and -"))
        elif name in RESERVED_NAMES:
            problems.append((where, f"{name!r} is reserved for crossway's own process"))
        depends = service.get("depends_on") if isinstance(service, dict) else None
        if not isinstance(depends, list):
            continue
        graph[str(name)] = []
        for i, dependency in enumerate(depends):
            if not isinstance(dependency, str):
                continue  # the models say what is wrong with it
            if dependency not in services:
                problems.append(([*where, "depends_on", i], f"unknown service {dependency!r}"))
            elif dependency == name:
                problems.append(([*where, "depends_on", i], "a service cannot depend on itself"))
            else:
                graph[str(name)].append(dependency)
    cycle = find_cycle(graph)
    if cycle:
        problems.append(
            (["services", cycle[0], "depends_on"], "dependency cycle: " + " -> ".join(cycle))
        )
    return problems


def semantic_problems(spec: UpFile, folder: Path | None) -> list[tuple[list[PathPart], str]]:
    """What the models cannot check field by field, once they passed: (path, message) pairs."""
    problems: list[tuple[list[PathPart], str]] = []
    names = list(spec.services)
    problems.extend(_port_problems(spec, names))
    problems.extend(document_problems(spec))
    if folder is not None:
        for i, seed in enumerate(spec.config):
            if seed.file is not None and not (folder / seed.file).is_file():
                problems.append((["config", i, "file"], f"no such file: {seed.file}"))
    return problems


def document_problems(spec: UpFile) -> list[tuple[list[PathPart], str]]:
    """Routes and policies checked as the control plane will check them on PUT,
    so a mistake is reported with its line before anything starts."""
    from crossway.proxy.routes.model import check_route_name, route_from_object
    from crossway.traffic.policy import decode_policy

    problems: list[tuple[list[PathPart], str]] = []
    for name, route in spec.routes.items():
        problems.extend(_document(["routes", name], route_from_object, route))
        problems.extend(_document(["routes", name], check_route_name, name))
    for name, policy in spec.policies.items():
        problems.extend(_document(["policies", name], decode_policy, json.dumps(policy)))
    return problems


def _document(
    where: list[PathPart], check: Callable[[Any], object], value: Any
) -> list[tuple[list[PathPart], str]]:
    try:
        check(value)
    except InvalidArgument as exc:
        field = str(exc.details.get("field", "$"))
        message = _AT_SUFFIX.sub("", exc.message)
        for prefix in (field.removeprefix("$."), field.removeprefix("$"), "name"):
            message = message.removeprefix(f"{prefix}: ")
        message = message.replace("Object contains unknown field", "unknown field")
        message = message[:1].lower() + message[1:]
        if message == "unknown field `true`":  # YAML 1.1 reads a bare `on:` as true
            message += " (a bare `on:` is the boolean true in YAML: write `statuses:`)"
        return [([*where, *json_path_parts(field)], message)]
    return []


_AT_SUFFIX = re.compile(r" - at `\$[^`]*`$")
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def json_path_parts(path: str) -> list[PathPart]:
    """`$.backends[1].weight` -> ["backends", 1, "weight"]."""
    parts: list[PathPart] = []
    for match in _PATH_PART.finditer(path.removeprefix("$")):
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
    return parts


def _port_problems(spec: UpFile, names: list[str]) -> list[tuple[list[PathPart], str]]:
    claimed: dict[int, str] = {}
    if spec.control_plane.port:
        claimed[spec.control_plane.port] = "the control plane"
    if spec.gateway.enabled:
        for port, what in (
            (spec.gateway.port, "the gateway"),
            (spec.gateway.admin_port, "the gateway admin"),
        ):
            if port in claimed:
                return [(["gateway"], f"port {port} is also used by {claimed[port]}")]
            claimed[port] = what
    problems: list[tuple[list[PathPart], str]] = []
    for name in names:
        fixed = spec.services[name].port
        if fixed is None:
            continue
        port = fixed
        if port in claimed:
            problems.append(
                (["services", name, "port"], f"port {port} is also used by {claimed[port]}")
            )
        else:
            claimed[port] = f"service {name}"
    return problems


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A dependency cycle in `graph` as [a, b, ..., a], or [] when there is none.
    Unknown names (reported elsewhere) are ignored."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return []


class Locator:
    """Positions of the fields of a composed YAML document."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root

    def problem(self, path: Sequence[PathPart], message: str) -> Problem:
        node, walked, _ = self._walk(path)
        mark = node.start_mark
        return Problem(mark.line + 1, mark.column + 1, render_path(walked), message)

    def problem_for(self, error: ErrorDetails) -> Problem:
        loc = list(error["loc"])
        node, walked, key_node = self._walk(loc)
        kind = error["type"]
        if kind == "missing":
            walked = [*walked, loc[len(walked)]] if len(loc) > len(walked) else walked
        elif kind == "extra_forbidden" and key_node is not None:
            node = key_node
        message = friendly(error)
        if len(loc) > len(walked) and loc[len(walked)] in _UNION_TAGS and kind != "missing":
            message = _UNION_TAGS[str(loc[len(walked)])]
        mark = node.start_mark
        return Problem(mark.line + 1, mark.column + 1, render_path(walked), message)

    def _walk(self, path: Sequence[PathPart]) -> tuple[yaml.Node, list[PathPart], yaml.Node | None]:
        node, walked, key_node = self.root, [], None
        for part in path:
            found = _child(node, part)
            if found is None:
                break
            key_node, node = found
            walked.append(part)
        return node, walked, key_node


def _child(node: yaml.Node, part: PathPart) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and _same_key(key.value, part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


def _same_key(text: str, part: PathPart) -> bool:
    return text == str(part)


def render_path(path: Sequence[PathPart]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_UNION_TAGS = {
    "str": "must be a string or a list of strings",
    "list[str]": "must be a string or a list of strings",
}
"""pydantic's names of the members of `str | list[str]` (the `command` field)."""

_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def friendly(error: ErrorDetails) -> str:
    """A short message for a pydantic error: `must be >= 1` rather than its prose."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the listed values')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern', 'the expected pattern')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    message: str = error["msg"]
    return message[:1].lower() + message[1:]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per path: a union (`command: str | list`) fails once per member."""
    seen: set[str] = set()
    out = []
    for problem in problems:
        if problem.path not in seen:
            seen.add(problem.path)
            out.append(problem)
    return out


def as_data(spec: UpFile) -> dict[str, Any]:
    return spec.model_dump(mode="json")
