"""What `crossway server` is told: one frozen value, checked before anything starts.

Every flag of `crossway server` (and its `CROSSWAY_*` environment variable)
lands in a `ServerSettings`. `check()` is the single place that says no: it
raises `InvalidArgument` with one readable sentence, so the CLI can print it on
one line and exit, and nothing half-starts.

Safety invariant: the control plane never listens beyond loopback without a
token, unless the operator said `--insecure` out loud.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from crossway.core.errors import InvalidArgument

DEFAULT_PORT = 7700
STORE_KINDS = ("sqlite", "memory", "etcd")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    data_dir: Path = Path(".crossway")
    port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"
    store: str = "sqlite"
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    token: str | None = None
    insecure: bool = False
    log_level: str = "info"
    log_format: str = "json"
    shutdown_grace: float = 10.0
    """Seconds in-flight requests get to finish after SIGTERM/SIGINT."""
    sse_heartbeat: float = 15.0
    """Seconds of silence after which an SSE stream sends a comment line."""
    ready_timeout: float = 2.0
    """How long `/readyz` waits for the store to answer."""
    store_timeout: float = 10.0
    """How long start-up waits for the store to open and answer."""
    max_body_bytes: int = 1 << 20

    def check(self) -> None:
        """Raise `InvalidArgument` naming the first setting that cannot work."""
        _check_choice("store", self.store, STORE_KINDS)
        _check_choice("log-level", self.log_level, LOG_LEVELS)
        _check_choice("log-format", self.log_format, LOG_FORMATS)
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"--port must be between 0 and 65535, got {self.port}")
        if not self.bind.strip():
            raise InvalidArgument("--bind must name an address, e.g. 127.0.0.1")
        self._check_etcd()
        self._check_token()
        for name in ("shutdown_grace", "sse_heartbeat", "ready_timeout", "store_timeout"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive")

    def _check_etcd(self) -> None:
        if self.store != "etcd":
            return
        if not self.etcd_endpoints:
            raise InvalidArgument("--store etcd needs --etcd-endpoints, e.g. http://127.0.0.1:2379")
        for endpoint in self.etcd_endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise InvalidArgument(
                    f"--etcd-endpoints: {endpoint!r} is not a URL (expected http://host:port)"
                )

    def _check_token(self) -> None:
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            raise InvalidArgument("--token must be non-empty and have no surrounding whitespace")
        if self.token is None and not self.insecure and not is_loopback(self.bind):
            raise InvalidArgument(
                f"refusing to listen on {self.bind} without a token: set --token (or "
                "CROSSWAY_TOKEN), or pass --insecure to accept unauthenticated access"
            )

    @property
    def auth_enabled(self) -> bool:
        return self.token is not None


def is_loopback(host: str) -> bool:
    """True when `host` can only be reached from this machine.

    Anything that is not a loopback literal or a well-known loopback name counts
    as public: an unknown host name might resolve anywhere.
    """
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_endpoints(text: str) -> tuple[str, ...]:
    """Split a comma-separated `--etcd-endpoints` value, dropping blanks."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgument(f"--{flag} must be one of {', '.join(choices)}; got {value!r}")
