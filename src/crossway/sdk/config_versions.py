"""What one served version of a bound config entry is worth: decoded by its
format, validated into the bound model, and saved for failover. Pure but for
the snapshot files; the binding that fetches and follows versions is
config.py.

Theory of operation
-------------------
- `decode_content` reads YAML (every `---` document, later mappings merged
  over earlier ones), JSON, TOML, or Java properties with dotted keys nested
  (`db.pool=5` -> `{"db": {"pool": "5"}}`, as Spring binds them); plain text
  cannot be bound (`DecodeError`).
- `Tracker` is versions in, verdicts out: a version that does not decode or
  validate is REJECTED and the old value stays; the same version twice is
  SAME; a good new one is ACCEPTED and becomes `value`.
- The snapshot of the last accepted version is written atomically (a
  temporary file renamed over the old one) under
  `<cache_dir>/config/<ns>/<group>/<key>.json`, so a restarted process with
  no control plane boots on it; a snapshot that cannot be read is ignored.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import pydantic
import yaml

from crossway.config.properties import PropertiesError, parse_properties
from crossway.core.files import write_atomically

M = TypeVar("M")
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- decoding (pure) ---------------------------------------------------------------------


class DecodeError(ValueError):
    """Content that cannot be turned into data for the model."""


def decode_content(content: str, fmt: str) -> Any:
    """Python data for `content` in format `fmt`; `DecodeError` when it cannot be."""
    try:
        if fmt == "yaml":
            return _merged_yaml(content)
        if fmt == "json":
            return json.loads(content)
        if fmt == "toml":
            return tomllib.loads(content)
        if fmt == "properties":
            return nest_dotted(parse_properties(content))
    except (ValueError, yaml.YAMLError, PropertiesError, RecursionError) as exc:
        raise DecodeError(f"content is not valid {fmt}: {exc}") from None
    raise DecodeError(
        f"a {fmt!r} entry cannot be bound; publish it as yaml, json, toml or properties"
    )


def _merged_yaml(content: str) -> Any:
    documents = [d for d in yaml.load_all(content, Loader=_YAML_LOADER) if d is not None]
    if not documents:
        return {}
    if len(documents) == 1:
        return documents[0]
    if not all(isinstance(d, dict) for d in documents):
        raise DecodeError("a multi-document YAML stream must hold mappings only")
    merged: dict[str, Any] = {}
    for document in documents:
        merged = deep_merge(merged, document)
    return merged


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings merge, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            out[key] = deep_merge(below, value)
        else:
            out[key] = value
    return out


def nest_dotted(flat: Mapping[str, str]) -> dict[str, Any]:
    """`{"a.b": "1", "c": "2"}` → `{"a": {"b": "1"}, "c": "2"}`; DecodeError when
    one key is both a value and a section (`a=1` beside `a.b=2`)."""
    root: dict[str, Any] = {}
    for dotted, value in flat.items():
        *path, last = dotted.split(".")
        node = root
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DecodeError(f"{dotted!r}: {part!r} is both a value and a section")
            node = child
        if isinstance(node.get(last), dict):
            raise DecodeError(f"{dotted!r} is both a value and a section")
        node[last] = value
    return root


# -- the tracker (pure) -------------------------------------------------------------------


class Served(msgspec.Struct, frozen=True):
    """One answer of the config center: what this instance is served (also
    the failover copy's format on disk)."""

    content: str
    format: str
    version: int
    md5: str
    beta: bool = False


class Verdict(Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Offer:
    """What offering one version did: the verdict, the values around it, and
    for a rejection the reason."""

    verdict: Verdict
    old: Any = None
    new: Any = None
    error: str = ""


class Tracker(Generic[M]):
    """The current value of a binding and the version it came from; pure.

    `offer(served)` decodes and validates; see the module header for the rules.
    """

    def __init__(self, adapter: pydantic.TypeAdapter[M]) -> None:
        self.adapter = adapter
        self.value: M | None = None
        self.current: Served | None = None
        """The version `value` came from (None: defaults, or nothing yet)."""
        self.rejected = 0

    @property
    def loaded(self) -> bool:
        return self.value is not None

    def offer(self, served: Served) -> Offer:
        if self.current is not None and served.md5 == self.current.md5 and self.loaded:
            self.current = served  # the same content may come as beta, then promoted
            return Offer(Verdict.UNCHANGED, self.value, self.value)
        try:
            new = self.adapter.validate_python(decode_content(served.content, served.format))
        except (DecodeError, pydantic.ValidationError) as exc:
            self.rejected += 1
            return Offer(Verdict.REJECTED, self.value, self.value, str(exc))
        old, self.value, self.current = self.value, new, served
        return Offer(Verdict.ACCEPTED, old, new)

    def defaults(self) -> M | None:
        """The model built from no data, or None when some field has no default."""
        try:
            return self.adapter.validate_python({})
        except pydantic.ValidationError:
            return None

    def use_defaults(self, value: M) -> None:
        self.value, self.current = value, None


# -- the failover snapshot -------------------------------------------------------------------


def snapshot_path(cache_dir: Path, namespace: str, group: str, key: str) -> Path:
    return Path(cache_dir) / "config" / namespace / group / f"{key}.json"


def write_snapshot(path: Path, served: Served) -> None:
    """Atomically replace `path` (temp file, fsync, rename); blocking."""
    write_atomically(path, msgspec.json.encode(served))


def read_snapshot(path: Path) -> Served | None:
    """The saved version, or None when there is none or it is unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Served)
    except (OSError, msgspec.DecodeError):
        return None
