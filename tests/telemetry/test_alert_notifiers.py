"""Notifiers: payload shapes, retries, bounded queues, and real SMTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from email import message_from_bytes

import httpx2
import pytest

from crossway.core.clock import VirtualClock
from crossway.resilience.backoff import Backoff
from crossway.telemetry.alerts.engine import Engine, Notification, Sample
from crossway.telemetry.alerts.expr import Condition
from crossway.telemetry.alerts.notifiers import (
    Dispatcher,
    email_message,
    slack_body,
    webhook_body,
)
from crossway.telemetry.alerts.rules import EmailSettings, NotifierConfig, parse_rules

RULES = """
rules:
  - name: orders-success
    expr: success_rate{service="orders"} < 0.99
    annotations: {summary: "orders failing"}
notifiers:
  - {name: hook, webhook: "http://127.0.0.1:9/hook"}
"""


class Values:
    def __init__(self, value: float) -> None:
        self.value = value

    def samples(self, condition: Condition, window: float) -> list[Sample]:
        return [Sample((("service", "orders"),), self.value)]


def notifications(config: NotifierConfig | None = None) -> tuple[Notification, Notification]:
    rules = parse_rules(RULES)
    if config is not None:
        rules = type(rules)(rules.rules, (config,))
    engine = Engine(rules, clock=VirtualClock())
    source = Values(0.5)
    [firing] = engine.evaluate(source)
    source.value = 1.0
    [resolved] = engine.evaluate(source)
    return firing, resolved


def test_webhook_body_is_alertmanager_shaped() -> None:
    firing, resolved = notifications()
    body = webhook_body(firing)
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "hook"
    [alert] = body["alerts"]
    assert alert["labels"]["alertname"] == "orders-success"
    assert alert["labels"]["service"] == "orders"
    assert alert["annotations"]["summary"] == "orders failing"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"].endswith("Z")
    assert alert["value"] == 0.5
    assert alert["valueText"] == "50%"
    assert webhook_body(resolved)["alerts"][0]["endsAt"].endswith("Z")
    json.dumps(body)  # plain JSON


def test_slack_and_email_bodies() -> None:
    firing, resolved = notifications()
    slack = slack_body(firing)
    assert slack["text"].startswith("[FIRING] orders-success")
    assert slack["attachments"][0]["color"] == "danger"
    assert slack_body(resolved)["attachments"][0]["color"] == "good"
    settings = EmailSettings(to=("a@x", "b@x"), sender="cw@x", host="h")
    mail = email_message(resolved, settings)
    assert mail["Subject"].startswith("[RESOLVED] orders-success")
    assert mail["To"] == "a@x, b@x"
    assert "resolved:" in mail.get_content()


def recording_client(log: list[httpx2.Request], failures: dict[str, int]) -> httpx2.AsyncClient:
    def handler(request: httpx2.Request) -> httpx2.Response:
        log.append(request)
        left = failures.get(request.url.path, 0)
        if left:
            failures[request.url.path] = left - 1
            return httpx2.Response(500)
        return httpx2.Response(200)

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


async def test_failures_are_retried_with_backoff() -> None:
    log: list[httpx2.Request] = []
    client = recording_client(log, {"/hook": 2})
    dispatcher = Dispatcher(client=client, attempts=3, backoff=Backoff(base=0.0))
    firing, _ = notifications()
    await dispatcher.configure([firing.notifier])
    assert dispatcher.submit(firing)
    await asyncio.wait_for(dispatcher.drain(), 5)
    assert len(log) == 3
    assert json.loads(log[-1].content)["status"] == "firing"
    assert (dispatcher.stats.sent, dispatcher.stats.retries, dispatcher.stats.failed) == (1, 2, 0)
    await dispatcher.close()
    await client.aclose()


async def test_giving_up_is_counted_and_other_notifiers_are_not_held_up() -> None:
    log: list[httpx2.Request] = []
    client = recording_client(log, {"/dead": 100})
    dispatcher = Dispatcher(client=client, attempts=2, backoff=Backoff(base=0.0))
    dead = NotifierConfig("dead", "webhook", url="http://127.0.0.1:9/dead")
    live = NotifierConfig("live", "slack", url="http://127.0.0.1:9/live")
    await dispatcher.configure([dead, live])
    firing, _ = notifications(dead)
    other, _ = notifications(live)
    dispatcher.submit(firing)
    dispatcher.submit(other)
    await asyncio.wait_for(dispatcher.drain(), 5)
    assert (dispatcher.stats.sent, dispatcher.stats.failed) == (1, 1)
    assert "attachments" in json.loads(next(r for r in log if r.url.path == "/live").content)
    await dispatcher.close()
    await client.aclose()


async def test_a_full_queue_drops_and_counts() -> None:
    gate = asyncio.Event()

    async def slow(request: httpx2.Request) -> httpx2.Response:
        await gate.wait()
        return httpx2.Response(200)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(slow))
    dispatcher = Dispatcher(client=client, max_queue=2)
    firing, _ = notifications()
    await dispatcher.configure([firing.notifier])
    accepted = [dispatcher.submit(firing) for _ in range(6)]
    await asyncio.sleep(0.01)
    assert accepted.count(False) >= 3
    assert dispatcher.stats.dropped == accepted.count(False)
    unknown = Notification(NotifierConfig("gone", "webhook", url="http://x"), "firing", {})
    assert not dispatcher.submit(unknown)
    gate.set()
    await dispatcher.close()
    await client.aclose()


async def test_reconfiguring_keeps_unchanged_notifiers() -> None:
    dispatcher = Dispatcher()
    a = NotifierConfig("a", "webhook", url="http://127.0.0.1:9/a")
    await dispatcher.configure([a])
    worker = dispatcher._workers["a"]
    await dispatcher.configure([a, NotifierConfig("b", "webhook", url="http://127.0.0.1:9/b")])
    assert dispatcher._workers["a"] is worker
    await dispatcher.configure([NotifierConfig("a", "webhook", url="http://127.0.0.1:9/other")])
    assert dispatcher._workers["a"] is not worker
    assert set(dispatcher._workers) == {"a"}
    await dispatcher.close()


# A small SMTP server on loopback, enough for smtplib.


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, recipients = "", []
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                writer.write(b"250-sink\r\n250 AUTH PLAIN\r\n")
            elif verb == "AUTH":
                self.logins.append(command)
                writer.write(b"235 ok\r\n")
            elif verb == "MAIL":
                sender = command.split(":", 1)[1].strip("<> ")
                writer.write(b"250 ok\r\n")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip("<> "))
                writer.write(b"250 ok\r\n")
            elif verb == "DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                self.messages.append((sender, recipients, data[:-5]))
                sender, recipients = "", []
                writer.write(b"250 queued\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def smtp_sink() -> AsyncIterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield sink, port
    finally:
        server.close()
        await server.wait_closed()


async def test_email_is_delivered_over_smtp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret")
    async with smtp_sink() as (sink, port):
        settings = EmailSettings(
            to=("oncall@example.com",),
            sender="crossway@example.com",
            host="127.0.0.1",
            port=port,
            username="cw",
            password_env="TEST_SMTP_PASSWORD",
        )
        mail = NotifierConfig("mail", "email", email=settings)
        dispatcher = Dispatcher(attempts=1)
        await dispatcher.configure([mail])
        firing, _ = notifications(mail)
        dispatcher.submit(firing)
        await asyncio.wait_for(dispatcher.drain(), 10)
        await dispatcher.close()
    assert dispatcher.stats.sent == 1
    [(sender, recipients, data)] = sink.messages
    assert (sender, recipients) == ("crossway@example.com", ["oncall@example.com"])
    parsed = message_from_bytes(data)
    assert parsed["Subject"].startswith("[FIRING] orders-success")
    assert sink.logins  # logged in with the password from the environment


async def test_an_unreachable_smtp_server_is_a_counted_failure() -> None:
    async with smtp_sink() as (_, port):
        pass  # closed: nothing listens on the port any more
    settings = EmailSettings(to=("a@x",), sender="b@x", host="127.0.0.1", port=port, timeout=2)
    mail = NotifierConfig("mail", "email", email=settings)
    dispatcher = Dispatcher(attempts=2, backoff=Backoff(base=0.0))
    await dispatcher.configure([mail])
    firing, _ = notifications(mail)
    dispatcher.submit(firing)
    await asyncio.wait_for(dispatcher.drain(), 10)
    await dispatcher.close()
    assert (dispatcher.stats.sent, dispatcher.stats.failed) == (0, 1)
