"""Sending alert notifications: JSON webhooks, Slack-compatible webhooks, e-mail over SMTP.

Theory of operation
- A `Dispatcher` keeps one bounded queue and one worker task per notifier, so
  a slow or dead receiver (an SMTP server timing out) never delays the others.
  `submit` never blocks: when a notifier's queue is full the notification is
  dropped and counted.
- A worker sends one notification at a time and retries a failure with
  exponential backoff (`Backoff`) up to `attempts` times, then gives up,
  logs and counts it. Cancellation (shutdown) stops a worker between
  attempts or mid-request; it is never swallowed.
- Payloads: the webhook body follows Alertmanager's webhook format (version
  "4": `status`, `receiver`, `alerts[]` with `labels`, `annotations`,
  `startsAt`, `endsAt`, `fingerprint`), so receivers written for Alertmanager
  work unchanged; Crossway adds `value` and `valueText` to each alert. The
  Slack body is `{"text", "attachments"}`, what Slack, Mattermost and
  Rocket.Chat incoming webhooks accept. E-mail goes through the standard
  library's `smtplib` in a worker thread (it blocks), with STARTTLS or SSL and
  a password read from the environment variable the rules name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx2

from crossway.resilience.backoff import Backoff
from crossway.telemetry.alerts.engine import FIRING, Notification
from crossway.telemetry.alerts.rules import EmailSettings, NotifierConfig

log = logging.getLogger("crossway.alerts")

Send = Callable[[Notification], Awaitable[None]]
_NEVER = "0001-01-01T00:00:00Z"


class NotifyError(Exception):
    """A notification could not be delivered (the message says why)."""


def webhook_body(n: Notification) -> dict[str, Any]:
    """An Alertmanager-compatible webhook payload holding one alert."""
    alert = n.alert
    labels = alert["labels"]
    entry = {
        "status": n.status,
        "labels": labels,
        "annotations": alert["annotations"],
        "startsAt": alert["started_at"],
        "endsAt": alert["resolved_at"] or _NEVER,
        "generatorURL": "",
        "fingerprint": alert["fingerprint"],
        "value": alert["value"],
        "valueText": alert["value_text"],
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{labels["alertname"]}"}}',
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.notifier.name,
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "",
        "alerts": [entry],
    }


def slack_body(n: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: a headline and a coloured attachment."""
    alert = n.alert
    title = f"[{n.status.upper()}] {alert['alertname']}"
    fields = [
        {"title": k, "value": v, "short": True}
        for k, v in alert["labels"].items()
        if k != "alertname"
    ]
    return {
        "text": f"{title}: {alert['annotations']['summary']}",
        "attachments": [
            {
                "color": "danger" if n.status == FIRING else "good",
                "title": title,
                "text": f"{alert['expr']} — value {alert['value_text']}",
                "fields": fields,
            }
        ],
    }


def email_message(n: Notification, settings: EmailSettings) -> EmailMessage:
    alert = n.alert
    where = ", ".join(f"{k}={v}" for k, v in alert["labels"].items() if k != "alertname")
    message = EmailMessage()
    message["Subject"] = f"[{n.status.upper()}] {alert['alertname']} ({where})"
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.to)
    lines = [
        alert["annotations"]["summary"],
        "",
        f"expression: {alert['expr']}",
        f"value:      {alert['value_text']}",
        f"started:    {alert['started_at']}",
    ]
    if alert["resolved_at"]:
        lines.append(f"resolved:   {alert['resolved_at']}")
    lines += ["", *(f"{k}: {v}" for k, v in alert["labels"].items())]
    message.set_content("\n".join(lines) + "\n")
    return message


def send_email(message: EmailMessage, settings: EmailSettings) -> None:
    """Blocking SMTP delivery (run it in a thread). Raises `NotifyError`."""
    password = os.environ.get(settings.password_env, "") if settings.password_env else ""
    try:
        smtp = _connect(settings)
        with smtp:
            if settings.starttls and not settings.ssl:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username:
                smtp.login(settings.username, password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(f"SMTP {settings.host}:{settings.port}: {exc}") from None


def _connect(settings: EmailSettings) -> smtplib.SMTP:
    if settings.ssl:
        context = ssl.create_default_context()
        return smtplib.SMTP_SSL(
            settings.host, settings.port, timeout=settings.timeout, context=context
        )
    return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)


def sender_for(config: NotifierConfig, client: httpx2.AsyncClient) -> Send:
    """The coroutine function that delivers to `config` (raises `NotifyError`)."""
    if config.kind == "email":
        assert config.email is not None
        settings = config.email

        async def email(n: Notification) -> None:
            await asyncio.to_thread(send_email, email_message(n, settings), settings)

        return email
    shape = slack_body if config.kind == "slack" else webhook_body

    async def post(n: Notification) -> None:
        try:
            response = await client.post(config.url, json=shape(n))
        except httpx2.HTTPError as exc:
            raise NotifyError(f"{config.url}: {exc or type(exc).__name__}") from None
        if response.status_code >= 300:
            raise NotifyError(f"{config.url} answered {response.status_code}")

    return post


@dataclass(slots=True)
class DispatchStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0


class Dispatcher:
    """Per-notifier queues and workers; see the module header."""

    def __init__(
        self,
        *,
        max_queue: int = 256,
        attempts: int = 5,
        backoff: Backoff | None = None,
        timeout: float = 10.0,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff = backoff or Backoff(base=1.0, cap=30.0)
        self.stats = DispatchStats()
        self.timeout = timeout
        self._client = client
        self._owns_client = client is None
        self._queues: dict[str, asyncio.Queue[Notification]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._configs: dict[str, NotifierConfig] = {}

    async def configure(self, notifiers: Sequence[NotifierConfig]) -> None:
        """Serve exactly `notifiers`: unchanged ones keep their queue, others restart
        (what was queued for a removed or changed notifier is dropped and counted)."""
        wanted = {n.name: n for n in notifiers}
        for name in list(self._configs):
            if wanted.get(name) != self._configs[name]:
                await self._stop(name)
        for name, config in wanted.items():
            if name not in self._configs:
                self._start(config)

    def submit(self, notification: Notification) -> bool:
        """Queue `notification`; False (and counted) when its queue is full or unknown."""
        queue = self._queues.get(notification.notifier.name)
        if queue is None:
            self.stats.dropped += 1
            return False
        try:
            queue.put_nowait(notification)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.warning("alert notifier %s is backed up; dropped", notification.notifier.name)
            return False
        return True

    async def drain(self) -> None:
        """Wait until every queued notification was delivered or given up on.

        No timeout of its own (wrap it in `asyncio.timeout`); cancelling it
        stops the waiting only, the workers carry on."""
        for queue in list(self._queues.values()):
            await queue.join()

    async def close(self) -> None:
        """Stop every worker (queued notifications are dropped) and close the client."""
        for name in list(self._configs):
            await self._stop(name)
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _start(self, config: NotifierConfig) -> None:
        queue: asyncio.Queue[Notification] = asyncio.Queue(self.max_queue)
        send = sender_for(config, self._http())
        self._configs[config.name] = config
        self._queues[config.name] = queue
        task = asyncio.get_running_loop().create_task(self._work(queue, send))
        self._workers[config.name] = task

    def _http(self) -> httpx2.AsyncClient:
        """The HTTP client, made on first use (inside the running loop, and only
        by a dispatcher that is started, so one never started owns nothing)."""
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.timeout)
        return self._client

    async def _stop(self, name: str) -> None:
        task = self._workers.pop(name)
        queue = self._queues.pop(name)
        del self._configs[name]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.stats.dropped += queue.qsize()

    async def _work(self, queue: asyncio.Queue[Notification], send: Send) -> None:
        while True:
            notification = await queue.get()
            try:
                await self._deliver(notification, send)
            finally:
                queue.task_done()

    async def _deliver(self, notification: Notification, send: Send) -> None:
        name = notification.notifier.name
        for attempt in range(self.attempts):
            try:
                await send(notification)
            except NotifyError as exc:
                problem = str(exc)
            except Exception as exc:  # a bug in a sender must not kill the worker
                log.exception("alert notifier %s failed unexpectedly", name)
                problem = repr(exc)
            else:
                self.stats.sent += 1
                return
            if attempt + 1 < self.attempts:
                self.stats.retries += 1
                await asyncio.sleep(self.backoff.delay(attempt))
        self.stats.failed += 1
        log.warning("alert notification to %s failed %d times: %s", name, self.attempts, problem)
