"""Config binding: a pydantic model bound to one config entry, kept current.

    class OrdersSettings(BaseModel):
        pool: int = Field(10, ge=1)

    settings = client.bind(OrdersSettings, "orders.yaml", group="orders")
    await settings                      # or: the asgi lifespan, or `async with settings:`
    settings.pool                       # 10 — attribute access reads the current value
    settings.value                      # the current OrdersSettings, whole

Theory of operation
-------------------
- `bind()` builds a `BoundConfig` and does no I/O; it may run at import time,
  before a pre-fork server forks. `start()` (also `await cfg`, `async with
  cfg`, `start_bindings(client)`, or the ASGI lifespan) loads the entry once
  and then follows it in one background task.
- The entry is read as the config center serves it *to this instance*:
  `X-Crossway-Labels` carries the client's labels, so a gray release
  (beta) whose selector matches them is what gets bound.
- Each version served is decoded by its format (config_versions.py) —
  YAML (every `---` document, later mappings merged over earlier ones),
  JSON, TOML, or Java properties with dotted keys nested (`db.pool=5` →
  `{"db": {"pool": "5"}}`, as Spring binds them) — and validated by pydantic (lax mode, so "5" is an
  int). Plain text cannot be bound.
- `Tracker` is the pure part: versions in, verdicts out. A version that does
  not decode or validate is REJECTED: logged with its version and the
  pydantic error, counted (`crossway_sdk_config_rejected_total`), and the old
  value stays. The next good version is accepted as usual.
- Following: long polls `GET …?index=N&wait=30s` from the index of the last
  answer, so a refused version is not served twice. The server answers a
  change at once: a new version reaches `value` within one round trip of its
  publication. No `If-None-Match` is sent: a promotion of the beta this
  instance already holds changes no content but does change `version` and
  `beta`, and those should stay true. A 404 (deleted entry) keeps the values. While the
  control plane is unreachable the values stay and polls back off (capped at
  3 s), logging once per outage.
- Start-up: the control plane's version if it validates; else the last
  accepted version this process (or an earlier run) saved under
  `<cache_dir>/config/<ns>/<group>/<key>.json`; else, for a missing entry or
  an unreachable control plane, the model's defaults when it has them.
  Otherwise `start()` raises — a service should not boot on config it could
  not validate and has no fallback for.

Invariants
----------
1. `value` always holds a validated instance; it is replaced whole, in one
   assignment, so a reader holding `cfg.value` sees one version, never a mix.
2. Change callbacks run after `value` changed, once per accepted change, in
   order, never for a rejected version; an exception in one is logged and
   neither rolls the value back nor stops the others.
3. The follower task exists only between `start()` and `stop()`; `stop()`
   cancels and awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx2
import pydantic
from prometheus_client import CollectorRegistry, Counter, Gauge

from crossway.config.model import DEFAULT_GROUP, FORMATS
from crossway.core.errors import CrosswayError, NotFound
from crossway.resilience.backoff import Backoff, Jitter
from crossway.sdk.config_versions import (
    DecodeError,
    Offer,
    Served,
    Tracker,
    Verdict,
    decode_content,
    deep_merge,
    nest_dotted,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from crossway.sdk.control import INDEX_HEADER, ControlPlaneUnavailable, check, index_of

__all__ = [
    "LABELS_HEADER",
    "LONG_POLL_WAIT",
    "RECONNECT",
    "BoundConfig",
    "ChangeCallback",
    "ConfigNotLoaded",
    "ConfigRejected",
    "DecodeError",
    "Offer",
    "Served",
    "Tracker",
    "Verdict",
    "bind",
    "bindings",
    "decode_content",
    "deep_merge",
    "nest_dotted",
    "read_snapshot",
    "snapshot_path",
    "start_bindings",
    "stop_bindings",
    "write_snapshot",
]

M = TypeVar("M")
ChangeCallback = Callable[[M, M], Awaitable[None] | None]
"""`callback(old, new)`, a def or an async def."""

log = logging.getLogger("crossway.sdk.config")

LABELS_HEADER = "X-Crossway-Labels"
LONG_POLL_WAIT = 30.0
"""Seconds one long poll may wait on the server (it adds up to 1/16 of jitter)."""
RECONNECT = Backoff(base=0.1, cap=3.0, jitter=Jitter.EQUAL)


class ConfigRejected(CrosswayError):
    """A config version failed to decode or validate (start-up has no fallback)."""

    code = "config_rejected"
    status = 422


class ConfigNotLoaded(CrosswayError):
    """`value` was read before the binding was started."""

    code = "config_not_loaded"


# -- metrics ---------------------------------------------------------------------------------


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("namespace", "group", "key")
        what = "config versions {} by bound settings objects"
        self.updates = Counter(
            "crossway_sdk_config_updates", what.format("accepted"), labels, registry=registry
        )
        self.rejected = Counter(
            "crossway_sdk_config_rejected", what.format("refused"), labels, registry=registry
        )
        self.version = Gauge(
            "crossway_sdk_config_version",
            "release version held (0: defaults)",
            labels,
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    found = _METRICS.get(registry)
    if found is None:
        found = _METRICS[registry] = _Metrics(registry)
    return found


# -- the binding -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Missing:
    """The entry does not exist (or was deleted)."""


@dataclass(frozen=True, slots=True)
class _Same:
    """Nothing changed for this instance (304)."""


class BoundConfig(Generic[M]):
    """A settings object bound to `namespace/group/key`; see the module header.

    Attribute access is forwarded to `value`, so `cfg.pool` reads the
    current version's field.
    """

    def __init__(
        self,
        client: Any,
        model_cls: type[M],
        key: str,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str | None = None,
        on_change: ChangeCallback[M] | None = None,
    ) -> None:
        self._client = client
        self.model_cls = model_cls
        self.namespace = namespace or client.settings.namespace
        self.group = group
        self.key = key
        self.source = "none"
        """Where `value` came from: control-plane, snapshot, defaults (none before start)."""
        self._tracker: Tracker[M] = Tracker(pydantic.TypeAdapter(model_cls))
        self._callbacks: list[ChangeCallback[M]] = [on_change] if on_change else []
        self._index = 0
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._metrics = _metrics_for(client.metrics_registry)
        self._labels = (self.namespace, group, key)
        _register(client, self)

    # -- reading -------------------------------------------------------------------------

    @property
    def value(self) -> M:
        """The current validated settings; `ConfigNotLoaded` before `start()`."""
        value = self._tracker.value
        if value is None:
            raise ConfigNotLoaded(f"{self.path} is not loaded yet: start the binding first")
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value, name)

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.group}/{self.key}"

    @property
    def version(self) -> int:
        """The release version of `value` (0 for the model's defaults)."""
        current = self._tracker.current
        return current.version if current is not None else 0

    @property
    def md5(self) -> str | None:
        current = self._tracker.current
        return current.md5 if current is not None else None

    @property
    def beta(self) -> bool:
        """Whether `value` is a gray release served to this instance's labels."""
        current = self._tracker.current
        return current.beta if current is not None else False

    @property
    def rejected(self) -> int:
        """Versions refused since the binding was made."""
        return self._tracker.rejected

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_change(self, callback: ChangeCallback[M]) -> ChangeCallback[M]:
        """Call `callback(old, new)` (def or async def) after each accepted
        change; usable as a decorator. Returns `callback`."""
        self._callbacks.append(callback)
        return callback

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> BoundConfig[M]:
        """Load the entry and follow it in the background; idempotent.

        Raises `ConfigRejected` when the served version does not validate and
        there is no saved one, `NotFound` when the entry does not exist and the
        model has no defaults, `ControlPlaneUnavailable` when the control plane
        cannot be reached and there is neither a saved version nor defaults.
        Cancelled, it leaves nothing running.
        """
        if self._starting is not None:
            await asyncio.shield(self._starting)  # started, or being started by another task
            return self
        loop = asyncio.get_running_loop()
        starting = self._starting = loop.create_future()
        try:
            await self._load()
        except BaseException as exc:
            self._starting = None
            if isinstance(exc, Exception):
                starting.set_exception(exc)
                starting.exception()  # marked retrieved: this caller raises it
            else:
                starting.cancel()
            raise
        self._task = loop.create_task(self._follow(), name=f"crossway-config-{self.path}")
        starting.set_result(None)
        return self

    async def stop(self) -> None:
        """Stop following (the value stays readable); idempotent. A later
        `start()` loads the entry again and follows it anew."""
        task, self._task = self._task, None
        self._starting = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def __await__(self) -> Generator[Any, None, BoundConfig[M]]:
        return self.start().__await__()

    async def __aenter__(self) -> BoundConfig[M]:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<BoundConfig {self.path} v{self.version} ({self.source})>"

    # -- loading ---------------------------------------------------------------------------

    async def _load(self) -> None:
        try:
            answer = await self._fetch(wait=None)
        except ControlPlaneUnavailable as exc:
            self._fallback(exc, missing=False)
            return
        if isinstance(answer, _Missing):
            self._fallback(NotFound(f"config entry {self.path} does not exist"), missing=True)
            return
        assert isinstance(answer, Served)
        offer = self._tracker.offer(answer)
        if offer.verdict is Verdict.REJECTED:
            self._count_rejection(answer, offer.error)
            self._fallback(ConfigRejected(f"{self.path}: {offer.error}"), missing=False)
        elif offer.verdict is Verdict.ACCEPTED:
            self._accepted(answer, "control-plane")

    def _fallback(self, why: CrosswayError, *, missing: bool) -> None:
        saved = read_snapshot(self._snapshot_path())
        if saved is not None and self._tracker.offer(saved).verdict is Verdict.ACCEPTED:
            log.warning("config %s: %s; using the saved version %d", self.path, why, saved.version)
            self._accepted(saved, "snapshot", save=False)
            return
        defaults = self._tracker.defaults()
        if defaults is not None and not isinstance(why, ConfigRejected):
            level = logging.INFO if missing else logging.WARNING
            log.log(level, "config %s: %s; using the model's defaults", self.path, why)
            self._tracker.use_defaults(defaults)
            self.source = "defaults"
            self._metrics.version.labels(*self._labels).set(0)
            return
        raise why

    # -- following -------------------------------------------------------------------------

    async def _follow(self) -> None:
        failures = 0
        while self._client_running():
            try:
                answer = await self._fetch(wait=LONG_POLL_WAIT)
            except CrosswayError as exc:  # unreachable, 5xx, or a 4xx refusal
                failures += 1
                if failures == 1:
                    log.warning("config %s: %s; keeping version %d", self.path, exc, self.version)
                await asyncio.sleep(RECONNECT.delay(min(failures - 1, 10)))
                continue
            except RuntimeError:
                if self._client_running():
                    raise
                return  # the client closed its HTTP client under us: it is stopping
            if failures:
                log.info("config %s: the control plane answers again", self.path)
                failures = 0
            await self._take(answer)

    async def _take(self, answer: Served | _Missing | _Same) -> None:
        if isinstance(answer, _Same):
            return
        if isinstance(answer, _Missing):
            log.warning("config %s was deleted; keeping version %d", self.path, self.version)
            return
        offer = self._tracker.offer(answer)
        if offer.verdict is Verdict.REJECTED:
            self._count_rejection(answer, offer.error)
        elif offer.verdict is Verdict.ACCEPTED:
            self._accepted(answer, "control-plane")
            await self._notify(offer.old, offer.new)
        else:
            self.source = "control-plane"  # e.g. the saved version, confirmed

    async def _fetch(self, *, wait: float | None) -> Served | _Missing | _Same:
        """One GET of the entry (a long poll when `wait` is given)."""
        settings = self._client.settings
        params: dict[str, str] = {}
        headers = {LABELS_HEADER: _labels_header(self._client.labels)}
        timeout: float | httpx2.Timeout = settings.timeout
        if wait is not None:
            params = {"index": str(self._index), "wait": f"{wait:g}s"}
            timeout = httpx2.Timeout(settings.timeout, read=wait * 17 / 16 + settings.timeout)
        path = f"/v1/config/{self.path}"
        try:
            response = await self._client.control.http.get(
                path, params=params, headers=headers, timeout=timeout
            )
        except httpx2.TransportError as exc:
            raise ControlPlaneUnavailable(f"cannot reach the control plane: {exc}") from None
        return self._answer(response)

    def _answer(self, response: httpx2.Response) -> Served | _Missing | _Same:
        if response.status_code == 404 and INDEX_HEADER in response.headers:
            self._index = index_of(response)
            return _Missing()
        check(response)
        self._index = index_of(response)
        if response.status_code == 304:
            return _Same()
        fmt = response.headers.get("x-crossway-format", "text")
        return Served(
            content=response.text,
            format=fmt if fmt in FORMATS else "text",
            version=int(response.headers.get("x-crossway-version", "0") or 0),
            md5=response.headers.get("etag", "").strip('"'),
            beta=response.headers.get("x-crossway-beta") == "true",
        )

    # -- effects ----------------------------------------------------------------------------

    def _accepted(self, served: Served, source: str, *, save: bool = True) -> None:
        self.source = source
        self._metrics.updates.labels(*self._labels).inc()
        self._metrics.version.labels(*self._labels).set(served.version)
        kind = "beta" if served.beta else "version"
        log.info("config %s: %s %d applied (%s)", self.path, kind, served.version, source)
        if save:
            self._save_later(served)

    def _count_rejection(self, served: Served, error: str) -> None:
        self._metrics.rejected.labels(*self._labels).inc()
        log.error(
            "config %s: version %d (md5 %s) rejected, keeping version %d: %s",
            self.path,
            served.version,
            served.md5,
            self.version,
            error,
        )

    def _save_later(self, served: Served) -> None:
        # Off the event loop: fsync can take milliseconds. A failed write
        # only loses the failover copy, never the value in memory.
        async def save() -> None:
            try:
                await asyncio.to_thread(write_snapshot, self._snapshot_path(), served)
            except OSError as exc:
                log.warning("config %s: cannot save the failover copy: %s", self.path, exc)

        with contextlib.suppress(RuntimeError):  # no running loop: nothing to save with
            _keep(asyncio.get_running_loop().create_task(save()))

    async def _notify(self, old: Any, new: Any) -> None:
        for callback in list(self._callbacks):
            try:
                result = callback(old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("config %s: a change callback failed", self.path)

    def _snapshot_path(self) -> Path:
        cache_dir = self._client.settings.cache_dir
        return snapshot_path(cache_dir, self.namespace, self.group, self.key)

    def _client_running(self) -> bool:
        # The client closes its control-plane connection when it stops.
        return not self._client.control.http.is_closed


def _labels_header(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


_PENDING: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    # A task nobody references may be collected before it finishes.
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


# -- the bindings of a client ---------------------------------------------------------------

_BINDINGS: weakref.WeakKeyDictionary[Any, list[BoundConfig[Any]]] = weakref.WeakKeyDictionary()


def _register(client: Any, bound: BoundConfig[Any]) -> None:
    _BINDINGS.setdefault(client, []).append(bound)


def bindings(client: Any) -> list[BoundConfig[Any]]:
    """Every binding made for `client`, in the order they were made."""
    return list(_BINDINGS.get(client, ()))


async def start_bindings(client: Any) -> None:
    """Start every binding of `client` (concurrently); the first failure is
    raised after the others were stopped again."""
    pending = bindings(client)
    results = await asyncio.gather(*(b.start() for b in pending), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await stop_bindings(client)
        raise failures[0]


async def stop_bindings(client: Any) -> None:
    """Stop every binding of `client`; values stay readable."""
    await asyncio.gather(*(b.stop() for b in bindings(client)))


bind = BoundConfig
"""`bind(client, Model, key, *, group=…, namespace=…, on_change=…)`: what
`client.bind(...)` returns; no I/O until started (see the module header)."""
