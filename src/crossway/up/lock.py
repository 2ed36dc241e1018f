"""One `crossway up` per folder: an exclusive `flock` on `<data_dir>/up.lock`.

The lock file holds the owner's pid and ports as JSON, so a second `up`
can say who is running (`crossway up is already running here (pid N,
control plane on :7700)`). The kernel drops the lock when the owner exits,
however it exits, so a stale file never blocks a new run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from crossway.core.errors import CrosswayError

LOCK_NAME = "up.lock"


class AlreadyRunning(CrosswayError):
    code = "already_running"
    status = 409


class UpLock:
    """Held from `acquire` until `release` (or the process ends)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock and record `info` (pid added); `AlreadyRunning` if held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = _parse(file.read())
            file.close()
            raise AlreadyRunning(_running_message(owner)) from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), **info}))
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.truncate(0)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def _parse(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _running_message(owner: dict[str, Any]) -> str:
    pid = owner.get("pid", "unknown")
    port = owner.get("control_port")
    where = f", control plane on :{port}" if port else ""
    return f"crossway up is already running here (pid {pid}{where})"
