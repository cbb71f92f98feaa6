"""One writer per folder: an OS file lock that dies with its process.

A search, a training or an inference holds the lock of the folder it writes into for as long as
it runs. A second run on the same folder stops at once with a one-line message naming the first
(its process id and command). The lock is ``flock`` on ``<folder>/.lock``: the kernel releases
it when the process ends, however it ends (``kill -9`` included), so a killed run never leaves
a stale lock behind; the file itself stays, holding the last holder's description.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from shipseg.core.errors import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def hold(folder: str | os.PathLike, other_place: str) -> Iterator[None]:
    """Holds ``folder``'s lock while the ``with`` block runs.

    Args:
        folder: The folder the run writes into (created if missing).
        other_place: How the user picks another folder, for the message (``--project``...).

    Raises:
        UserError: When another process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{folder}: in use by {describe_holder(path)}; wait for it to finish, or use "
                f"another {other_place}"
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps(_this_process()).encode())
        yield
    finally:
        os.close(handle)  # Closing the only descriptor releases the lock.


def describe_holder(path: Path) -> str:
    """``process 123 (python search.py ...)`` from a lock file, or what can be said."""
    try:
        holder = json.loads(path.read_text())
        return f"process {holder['pid']} ({holder['command']}, since {holder['started']})"
    except (OSError, ValueError, KeyError):
        return "another process"


def _this_process() -> dict:
    return {
        "pid": os.getpid(),
        "command": " ".join(["python", Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
