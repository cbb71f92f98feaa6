"""Waiting on another process or thread: for a sign of it, with a deadline that fails clearly.

Tests that start a command wait for what it does (a line it prints, a file it writes, its end)
rather than for a fixed time: as long as it takes and no longer, so a loaded machine does not
make them flaky, and when the sign never comes the test fails saying what it waited for.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable

import pytest


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    interval: float = 0.05,
) -> None:
    """Returns once ``condition()`` holds; fails the test at the deadline or if ``process`` ends.

    For states no one signals (a file another process writes): the condition is checked every
    ``interval`` seconds, and while ``process`` runs the pause is a wait on its end, so its end
    is noticed at once.

    Args:
        condition: The state waited for, checked until it returns true.
        what: The state in words, for the failure message ("two trials completed").
        timeout: Seconds to wait at most; the test fails past them.
        process: The process expected to bring the state about: the test fails as soon as it
            ends without it. None: no process to watch.
        interval: Seconds between checks.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            if condition():  # brought about as it ended
                return
            pytest.fail(f"waited for {what}, but the process ended (status {process.returncode})")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}, in vain")
        if process is None:
            time.sleep(interval)  # a poll interval: nothing announces this state
        else:
            try:
                process.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                pass


def wait_for_line(process: subprocess.Popen, prefix: str, what: str, timeout: float) -> str:
    """The first line ``process`` prints (text-mode ``stdout=PIPE``) that starts with ``prefix``.

    A thread reads the lines, so the wait has a deadline even though reading one blocks; the
    lines after the one found are left unread.

    Args:
        process: A process started with ``stdout=subprocess.PIPE`` and ``text=True``.
        prefix: How the awaited line starts; earlier lines are skipped.
        what: The line's meaning in words, for the failure message.
        timeout: Seconds to wait at most; the test fails past them.

    Returns:
        The line, without its line break.
    """
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    skipped: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith(prefix):
                lines.put(line.rstrip("\n"))
                return
            skipped.append(line)
        lines.put(None)  # the output closed first

    threading.Thread(target=read, daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        line = TimeoutError  # failed below, out of the except block: no chained traceback
    if line is TimeoutError:
        pytest.fail(f"waited {timeout:g} s for {what} ({prefix!r}...), in vain; before: {skipped}")
    if line is None:
        pytest.fail(f"the process closed its output (status {process.poll()}) before {what}")
    return line
