"""One `crossway up` per folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossway.up.lock import AlreadyRunning, UpLock


def test_a_held_lock_names_the_owner_and_is_free_again_after_release(tmp_path: Path) -> None:
    first = UpLock(tmp_path)
    first.acquire({"control_port": 7700})
    with pytest.raises(AlreadyRunning) as caught:
        UpLock(tmp_path).acquire({"control_port": 7701})
    assert caught.value.message == (
        f"crossway up is already running here (pid {os.getpid()}, control plane on :7700)"
    )
    first.release()
    second = UpLock(tmp_path)
    second.acquire({"control_port": 7701})
    second.release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from crossway.up.lock import UpLock; "
        f"UpLock(Path({str(tmp_path)!r})).acquire({{'control_port': 1}}); sys.exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    lock = UpLock(tmp_path)
    lock.acquire({})  # the file is still there, the lock is not
    lock.release()
