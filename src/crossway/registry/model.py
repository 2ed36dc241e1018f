"""The registry's typed values and their validation.

An instance is stored as JSON at `/services/{service}/instances/{id}`, bound to
a lease whose TTL is its heartbeat. What a client sends (`Registration`) is
validated strictly: unknown fields, bad names, ports, addresses and durations
are refused with an error naming the field, before anything is written.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Literal

import msgspec

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument

SERVICES_PREFIX = "/services/"
SETTINGS_PREFIX = "/registry/settings/"

Status = Literal["passing", "warning", "critical"]

NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
TAG = re.compile(r"^[^\s,]{1,128}$")
MIN_TTL, MAX_TTL = 1.0, 24 * 3600.0
DEFAULT_TTL = "30s"


class Check(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """An active health check run by the control plane (exactly one target)."""

    http: str | None = None
    tcp: str | None = None
    grpc: str | None = None
    interval: str = "10s"
    timeout: str = "2s"
    deregister_after: str | None = None


class Registration(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `PUT /v1/services/{service}/instances/{id}`."""

    address: str
    port: int
    zone: str | None = None
    weight: int = 100
    tags: list[str] = []
    metadata: dict[str, str] = {}
    ttl: str | None = None
    lease: str | None = None
    check: Check | None = None


class Instance(msgspec.Struct, gc=False):
    """What the registry stores and answers for one instance.

    Not tracked by Python's cyclic garbage collector (`gc=False`: its fields
    can never lead back to it), so the catalog's 100,000 instances do not
    lengthen the pause of every full collection."""

    service: str
    id: str
    address: str
    port: int
    weight: int = 100
    zone: str | None = None
    tags: list[str] = []
    metadata: dict[str, str] = {}
    lease: str | None = None
    ttl: str | None = None
    check: Check | None = None
    status: Status = "passing"
    output: str = ""
    registered_at: float = 0.0
    status_since: float = 0.0
    stale: bool = False
    """Set in answers (never stored) while self-preservation holds its lease."""


def instance_key(service: str, instance_id: str) -> str:
    return f"{SERVICES_PREFIX}{service}/instances/{instance_id}"


def service_prefix(service: str) -> str:
    return f"{SERVICES_PREFIX}{service}/instances/"


def parse_instance_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(SERVICES_PREFIX):
        return None
    service, sep, rest = key[len(SERVICES_PREFIX) :].partition("/instances/")
    if not sep or not service or not rest:
        return None
    return service, rest


def lease_to_text(lease: int) -> str:
    return f"{lease:x}"


def lease_from_text(text: str, *, field: str = "lease") -> int:
    try:
        lease = int(text, 16)
    except ValueError:
        raise InvalidArgument(
            f"{_label(field)} must be a lease id in hex, got {text!r}", field=field
        ) from None
    if lease <= 0 or lease >= 2**63:
        raise InvalidArgument(f"{_label(field)} is out of range", field=field)
    return lease


def _label(field: str) -> str:
    return field.removeprefix("$.")


def check_name(value: str, field: str) -> str:
    if not NAME.match(value):
        raise InvalidArgument(
            f"{_label(field)} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            field=field,
        )
    return value


def check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not HOSTNAME.match(value):
            raise InvalidArgument(
                f"address {value!r} is neither an IP address nor a host name", field="$.address"
            ) from None
    return value


@functools.lru_cache(maxsize=1024)
def duration_seconds(value: str) -> float:
    """`parse_duration`, remembered: every registration carries the same few
    TTLs and intervals ("30s"), and parsing one costs more than a dict lookup."""
    return parse_duration(value)


def check_duration(value: str, field: str, *, low: float, high: float) -> float:
    try:
        seconds = duration_seconds(value)
    except ValueError as exc:
        raise InvalidArgument(f"{_label(field)}: {exc}", field=field) from None
    if not low <= seconds <= high:
        raise InvalidArgument(
            f"{_label(field)} must be between {low:g}s and {high:g}s", field=field
        )
    return seconds


def host_port(value: str, field: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{_label(field)} must be host:port, got {value!r}", field=field)
    check_address(host.strip("[]"))
    return value


def validate(reg: Registration) -> None:
    """Raise InvalidArgument naming the first bad field."""
    check_address(reg.address)
    if not 0 < reg.port < 65536:
        raise InvalidArgument("port must be between 1 and 65535", field="$.port")
    if reg.zone is not None:
        check_name(reg.zone, "$.zone")
    if not 0 <= reg.weight <= 10_000:
        raise InvalidArgument("weight must be between 0 and 10000", field="$.weight")
    for tag in reg.tags:
        if not TAG.match(tag):
            raise InvalidArgument(f"tag {tag!r} is not valid (no spaces or commas)", field="$.tags")
    for name, value in reg.metadata.items():
        if not name or len(name) > 128 or len(value) > 1024:
            raise InvalidArgument(
                "metadata keys are 1-128 chars, values up to 1024", field="$.metadata"
            )
    if reg.ttl is not None:
        check_duration(reg.ttl, "$.ttl", low=MIN_TTL, high=MAX_TTL)
    if reg.lease is not None:
        lease_from_text(reg.lease, field="$.lease")
        if reg.ttl is not None:
            raise InvalidArgument("give either ttl or lease, not both", field="$.ttl")
    if reg.check is not None:
        validate_check(reg.check)


def validate_check(check: Check) -> None:
    targets = [t for t in (check.http, check.tcp, check.grpc) if t is not None]
    if len(targets) != 1:
        raise InvalidArgument("a check has exactly one of http, tcp or grpc", field="$.check")
    if check.http is not None and not re.match(r"^https?://[^\s/]+", check.http):
        raise InvalidArgument("check.http must be an http:// or https:// URL", field="$.check.http")
    if check.tcp is not None:
        host_port(check.tcp, "$.check.tcp")
    if check.grpc is not None:
        host_port(check.grpc.split("/", 1)[0], "$.check.grpc")
    check_duration(check.interval, "$.check.interval", low=0.1, high=3600)
    check_duration(check.timeout, "$.check.timeout", low=0.05, high=600)
    if check.deregister_after is not None:
        check_duration(check.deregister_after, "$.check.deregister_after", low=1, high=30 * 86400)


ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Instance)


def encode(instance: Instance) -> bytes:
    return ENCODER.encode(instance)


def decode(raw: bytes) -> Instance:
    return _DECODER.decode(raw)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
