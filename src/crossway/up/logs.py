"""Where the output of every supervised process goes.

Each line a replica prints is
- written to the terminal as `orders.1 | line`, the label in a colour that
  stays the same for a service across runs (chosen from its name), padded so
  the bars line up; plain text when the terminal is not a TTY or NO_COLOR is
  set;
- kept in a ring buffer per service (the last `keep` lines, `replica | line`)
  for `GET /v1/processes/{service}/logs`;
- appended to `<data_dir>/logs/<service>.log`;
- handed to every follower of the service (a bounded queue each; a follower
  that does not keep up loses lines rather than slowing the services down).

The supervisor's own notes about a service (exits, restarts) go the same way
under the replica label `crossway`, so `crossway logs orders` shows them too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO

COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)
"""ANSI foreground colours, picked per service by a stable hash of its name."""
NOTE = "crossway"


def colour_of(service: str) -> int:
    return COLOURS[zlib.crc32(service.encode()) % len(COLOURS)]


class LogHub:
    def __init__(
        self,
        directory: Path | None,
        *,
        terminal: TextIO | None = None,
        colour: bool | None = None,
        keep: int = 1000,
    ) -> None:
        self.terminal = terminal if terminal is not None else sys.stdout
        self.colour = _use_colour(self.terminal) if colour is None else colour
        self.keep = keep
        self.directory = directory
        self.width = 12
        self._buffers: dict[str, collections.deque[str]] = {}
        self._files: dict[str, IO[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[str]]] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def line(self, service: str, replica: str, text: str) -> None:
        """One line of output of `service`'s `replica` (a label such as "1")."""
        text = text.rstrip("\r\n")
        label = f"{service}.{replica}" if replica != NOTE else f"{service}"
        self._to_terminal(service, label, text)
        entry = f"{replica} | {text}"
        self._buffer(service).append(entry)
        self._write_file(service, entry)
        for queue in self._followers.get(service, ()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(entry)

    def note(self, service: str, text: str) -> None:
        """A line from the supervisor about `service`."""
        self.line(service, NOTE, text)

    def tail(self, service: str, count: int) -> list[str]:
        lines = self._buffers.get(service)
        if not lines or count <= 0:
            return []
        return list(lines)[-count:]

    @contextlib.contextmanager
    def follow(self, service: str, *, size: int = 1000) -> Iterator[asyncio.Queue[str]]:
        """A queue receiving `service`'s lines from now on, until the block ends."""
        queue: asyncio.Queue[str] = asyncio.Queue(size)
        self._followers.setdefault(service, set()).add(queue)
        try:
            yield queue
        finally:
            self._followers[service].discard(queue)

    def close(self) -> None:
        for file in self._files.values():
            with contextlib.suppress(OSError):
                file.close()
        self._files.clear()

    def _buffer(self, service: str) -> collections.deque[str]:
        buffer = self._buffers.get(service)
        if buffer is None:
            buffer = self._buffers[service] = collections.deque(maxlen=self.keep)
        return buffer

    def _to_terminal(self, service: str, label: str, text: str) -> None:
        self.width = max(self.width, len(label))
        padded = label.ljust(self.width)
        if self.colour:
            padded = f"\x1b[{colour_of(service)}m{padded}\x1b[0m"
        with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop us
            self.terminal.write(f"{padded} | {text}\n")
            self.terminal.flush()

    def _write_file(self, service: str, entry: str) -> None:
        if self.directory is None:
            return
        try:
            file = self._files.get(service)
            if file is None:
                file = self._files[service] = open(  # noqa: SIM115 - kept open for the run
                    self.directory / f"{service}.log", "a", encoding="utf-8", buffering=1
                )
            file.write(entry + "\n")
        except OSError:
            self.directory = None  # a full disk: keep serving the terminal and the buffer


def _use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())
