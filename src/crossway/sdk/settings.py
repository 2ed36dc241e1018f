"""What a service tells the SDK about itself and where the control plane is.

Theory of operation
- `ClientSettings` is a frozen value: it is read once (arguments win over the
  environment, the environment over defaults) and never changes afterwards,
  so every part of the SDK can hold it without locks or copies.
- `ClientSettings.from_env(**overrides)` reads the `CROSSWAY_*` variables;
  the constructor reads nothing but its arguments (handy in tests).
- Every value is checked when the settings are made, not when first used: a
  typo in `CROSSWAY_TTL` fails at start with the variable's name in the
  message, not minutes later inside a background task.

Invariants
- `labels` is a read-only mapping and `tags` a tuple: a settings object
  cannot be changed behind the back of the client that holds it.
- `instance_id` is None unless given. The default id,
  `{service}-{hostname}-{pid}`, is computed by `default_instance_id()` when
  asked for, so a client built before a pre-fork server forks still gets one
  id per worker process.
- `address` is never empty: without `CROSSWAY_ADDRESS` it is this host's
  outbound IP as the routing table sees it (no packet is sent), or 127.0.0.1
  on a machine with no route but loopback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument

DEFAULT_URL = "http://127.0.0.1:7700"
DEFAULT_TTL = "10s"
DEFAULT_CACHE_DIR = ".crossway/cache"
DEFAULT_NAMESPACE = "default"
# Registry names: letters, digits, '.', '_' and '-', as the control plane checks.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9._-]+")
# A documentation address (RFC 5737): asking the routing table how to reach it
# reveals the outbound interface without sending anything anywhere.
_PROBE_ADDRESS = "192.0.2.1"

_ENV = {
    "url": "CROSSWAY_URL",
    "token": "CROSSWAY_TOKEN",
    "service": "CROSSWAY_SERVICE",
    "instance_id": "CROSSWAY_INSTANCE_ID",
    "address": "CROSSWAY_ADDRESS",
    "port": "CROSSWAY_PORT",
    "zone": "CROSSWAY_ZONE",
    "labels": "CROSSWAY_LABELS",
    "tags": "CROSSWAY_TAGS",
    "weight": "CROSSWAY_WEIGHT",
    "ttl": "CROSSWAY_TTL",
    "cache_dir": "CROSSWAY_CACHE_DIR",
    "namespace": "CROSSWAY_NAMESPACE",
    "timeout": "CROSSWAY_TIMEOUT",
    "telemetry": "CROSSWAY_TELEMETRY",
    "stats_interval": "CROSSWAY_STATS_INTERVAL",
    "trace_sample_rate": "CROSSWAY_TRACE_SAMPLE_RATE",
    "register_when_listening": "CROSSWAY_REGISTER_WHEN_LISTENING",
}
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


class InvalidSettings(InvalidArgument):
    """A setting (argument or environment variable) has a value the SDK cannot use."""

    code = "invalid_settings"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """Everything the SDK needs to know; see the module header for defaults."""

    url: str = DEFAULT_URL
    token: str | None = None
    service: str | None = None
    instance_id: str | None = None
    address: str = ""
    port: int | None = None
    zone: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    weight: int = 100
    ttl: str = DEFAULT_TTL
    cache_dir: Path = Path(DEFAULT_CACHE_DIR)
    namespace: str = DEFAULT_NAMESPACE
    timeout: float = 10.0
    """Seconds any single control-plane request may take (blocking calls add their wait)."""
    telemetry: bool = True
    """Push golden signals and spans to the control plane (needs `service`)."""
    stats_interval: float = 10.0
    """Seconds between golden-signal pushes (1 to 60)."""
    trace_sample_rate: float = 1.0
    """Share of new traces recorded here (a caller's decision is always kept)."""
    register_when_listening: bool = False
    """Under `crossway.lifespan`: register only once `address:port` accepts
    connections, so no caller is sent to an instance whose server is still
    starting (ASGI servers run the lifespan before they listen)."""

    def __post_init__(self) -> None:
        _set(self, "url", _check_url(self.url))
        _set(self, "labels", MappingProxyType(dict(self.labels)))
        _set(self, "tags", tuple(self.tags))
        _set(self, "cache_dir", Path(self.cache_dir))
        if not self.address:
            _set(self, "address", guess_address())
        self._check()

    @classmethod
    def from_env(
        cls, *, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ClientSettings:
        """Settings from `CROSSWAY_*` variables, with `overrides` winning
        (an override of None means "not given": the environment applies).

        `environ` defaults to `os.environ`. Raises `InvalidSettings` naming the
        variable (or argument) whose value is wrong, and `TypeError` for an
        override that is not a setting.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        for name, variable in _ENV.items():
            raw = env.get(variable)
            if raw is not None and raw.strip() != "" and name not in values:
                values[name] = _from_text(name, variable, raw.strip())
        return cls(**values)

    @property
    def ttl_seconds(self) -> float:
        return parse_duration(self.ttl)

    def default_instance_id(self) -> str:
        """`{service}-{hostname}-{pid}` made a valid registry name, for now's pid."""
        host = _NOT_NAME_CHAR.sub("-", socket.gethostname()).strip("-._") or "host"
        prefix = self.service or "client"
        return _fit_name(f"{prefix}-{host}-{os.getpid()}")

    def resolved_instance_id(self) -> str:
        """The instance id to register under: the given one, else the default."""
        return self.instance_id or self.default_instance_id()

    def _check(self) -> None:
        if self.service is not None:
            _check_name(self.service, "service")
        if self.instance_id is not None:
            _check_name(self.instance_id, "instance_id")
        if self.zone is not None:
            _check_name(self.zone, "zone")
        if self.port is not None and not 0 < self.port < 65536:
            raise InvalidSettings("port must be between 1 and 65535", field="port")
        if not 0 <= self.weight <= 10_000:
            raise InvalidSettings("weight must be between 0 and 10000", field="weight")
        for tag in self.tags:
            if not tag or any(c.isspace() or c == "," for c in tag):
                raise InvalidSettings(f"tag {tag!r} is not valid (no spaces or commas)")
        _check_ttl(self.ttl)
        if self.timeout <= 0:
            raise InvalidSettings("timeout must be positive", field="timeout")
        if not self.namespace:
            raise InvalidSettings("namespace must not be empty", field="namespace")
        if not 1.0 <= self.stats_interval <= 60.0:
            raise InvalidSettings(
                "stats_interval must be between 1s and 60s", field="stats_interval"
            )
        if not 0.0 <= self.trace_sample_rate <= 1.0:
            raise InvalidSettings(
                "trace_sample_rate must be between 0 and 1", field="trace_sample_rate"
            )


def guess_address() -> str:
    """This host's outbound IP address, or 127.0.0.1 when only loopback routes.

    A UDP socket's `connect` only consults the routing table; nothing is sent.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((_PROBE_ADDRESS, 9))
            address: str = probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    if ipaddress.ip_address(address).is_unspecified:
        return "127.0.0.1"
    return address


def parse_labels(text: str) -> dict[str, str]:
    """`"k=v,k2=v2"` → `{"k": "v", "k2": "v2"}`; blanks around items are ignored."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item.strip()!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def _from_text(name: str, variable: str, raw: str) -> Any:
    try:
        if name == "port" or name == "weight":
            return int(raw)
        if name == "timeout" or name == "stats_interval":
            return parse_duration(raw)
        if name == "trace_sample_rate":
            return float(raw)
        if name == "telemetry" or name == "register_when_listening":
            return _flag(raw)
        if name == "labels":
            return parse_labels(raw)
        if name == "tags":
            return tuple(t.strip() for t in raw.split(",") if t.strip())
        if name == "cache_dir":
            return Path(raw).expanduser()
    except ValueError as exc:
        raise InvalidSettings(f"{variable}={raw!r}: {exc}", field=variable) from None
    return raw


def _flag(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError("must be one of 1, true, yes, on, 0, false, no, off")


def _check_url(url: str) -> str:
    if not re.match(r"^https?://[^\s/]+", url):
        raise InvalidSettings(
            f"url must be http://host:port or https://…, got {url!r}", field="url"
        )
    return url.rstrip("/")


def _check_ttl(ttl: str) -> None:
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise InvalidSettings(f"ttl: {exc}", field="ttl") from None
    if not 1.0 <= seconds <= 24 * 3600.0:
        raise InvalidSettings("ttl must be between 1s and 24h", field="ttl")


def _check_name(value: str, name: str) -> None:
    if not _NAME.match(value):
        raise InvalidSettings(
            f"{name} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            field=name,
        )


def _fit_name(text: str) -> str:
    """Trim to the registry's 128 characters, keeping the pid at the end unique."""
    if len(text) <= 128:
        return text
    head, _, pid = text.rpartition("-")
    return f"{head[: 127 - len(pid)].rstrip('-._')}-{pid}"


def _set(obj: ClientSettings, name: str, value: Any) -> None:
    # Normalising in __post_init__ of a frozen dataclass is the documented
    # exception to immutability: the object is not yet visible to anyone.
    object.__setattr__(obj, name, value)
