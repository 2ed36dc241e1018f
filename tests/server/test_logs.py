from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from crossway.server.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    default_log_format,
)


def _record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "crossway.test", "levelname": "WARNING", "levelno": 30, "msg": msg, "args": args}
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_the_fixed_fields_then_the_extras() -> None:
    line = JsonFormatter().format(_record("hello %s", "world", route="/x", status=200))
    fields = json.loads(line)
    assert list(fields)[:4] == ["ts", "level", "logger", "msg"]
    assert fields["level"] == "warning"
    assert fields["logger"] == "crossway.test"
    assert fields["msg"] == "hello world"
    assert fields["route"] == "/x"
    assert fields["status"] == 200
    assert fields["ts"].endswith("Z")
    assert "T" in fields["ts"]


def test_a_traceback_stays_on_one_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert "Traceback" in fields["exc"]
    assert "RuntimeError: boom" in fields["exc"]


def test_uvicorn_colour_copies_and_unencodable_extras() -> None:
    fields = json.loads(JsonFormatter().format(_record(color_message="\x1b[1m", obj=object())))
    assert "color_message" not in fields
    assert fields["obj"].startswith("<object object")


def test_text_format_is_key_value() -> None:
    line = TextFormatter().format(_record("hello %s", "you", route="/x"))
    assert "warning" in line
    assert "crossway.test: hello you" in line
    assert line.endswith(" route=/x")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_routes_uvicorn_through_one_handler() -> None:
    stream = io.StringIO()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(io.StringIO()))
    configure_logging("info", "json", stream=stream)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("crossway.access").debug("not at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "Started server process [42]"
    assert json.loads(lines[0])["logger"] == "uvicorn.error"


def test_default_format_is_text_only_at_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert default_log_format(Tty()) == "text"
    assert default_log_format(io.StringIO()) == "json"
