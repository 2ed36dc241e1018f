"""The multiplexed terminal, the ring buffers, the log files and followers."""

from __future__ import annotations

import io
from pathlib import Path

from crossway.up.logs import LogHub, colour_of


def test_lines_are_prefixed_kept_filed_and_followed(tmp_path: Path) -> None:
    terminal = io.StringIO()
    hub = LogHub(tmp_path / "logs", terminal=terminal, colour=False, keep=3)
    with hub.follow("orders") as queue:
        hub.line("orders", "1", "started\n")
        hub.note("orders", "orders.1 exited with code 1; restarting in 1s")
    hub.line("orders", "2", "late")
    hub.line("orders", "2", "later")
    hub.line("web", "1", "hello")
    hub.close()
    assert terminal.getvalue().splitlines() == [
        "orders.1     | started",
        "orders       | orders.1 exited with code 1; restarting in 1s",
        "orders.2     | late",
        "orders.2     | later",
        "web.1        | hello",
    ]
    assert hub.tail("orders", 10) == [
        "crossway | orders.1 exited with code 1; restarting in 1s",
        "2 | late",
        "2 | later",
    ]
    assert hub.tail("orders", 1) == ["2 | later"]
    assert hub.tail("nobody", 5) == []
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [
        "1 | started",
        "crossway | orders.1 exited with code 1; restarting in 1s",
    ]
    assert (tmp_path / "logs" / "orders.log").read_text().splitlines()[0] == "1 | started"


def test_colours_are_stable_per_service(tmp_path: Path) -> None:
    terminal = io.StringIO()
    hub = LogHub(None, terminal=terminal, colour=True)
    hub.line("orders", "1", "x")
    assert terminal.getvalue().startswith(f"\x1b[{colour_of('orders')}m")
    assert colour_of("orders") == colour_of("orders")
