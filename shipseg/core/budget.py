"""Wall-time budgets, as Optuna's ``timeout`` and Ray Tune's ``time_budget_s``.

``search.py --time-budget 45m`` starts no trial once the budget is spent and stops the running
one at the budget; the time a project has spent is kept in ``budget.json``, so a rerun of the
same command resumes with what is left, and a larger budget extends it. ``train.py
--time-budget 60m`` stops training at the budget and keeps the best epoch.

Deadlines are wall-clock times (``time.time()``), not a process's monotonic clock: a trial runs
in a process of its own, and in a distributed search on a machine of its own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import keras

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``45m``, ``1h30m``, ``90s`` or ``1.5h``.

    Raises:
        ValueError: For text that is not a positive duration with units.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(f"time budget {text!r} is not a duration (use e.g. 45m, 1h30m, 90s)")
    hours, minutes, seconds = (float(group or 0) for group in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"time budget {text!r} must be longer than zero (e.g. 45m)")
    return total


def format_duration(seconds: float) -> str:
    """``1h05m``, ``12m30s`` or ``40s``: what progress lines show."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class TimeBudget(keras.callbacks.Callback):
    """Stops training at a wall-clock deadline, and never starts an epoch that cannot end by it.

    After each epoch, the next one is started only if it is expected to end before the
    deadline (an epoch is assumed to take as long as the longest so far, validation included).
    If an epoch still runs past the deadline, training stops after the current step; Keras then
    ends the epoch as usual (its validation runs and checkpoints see it).

    Args:
        deadline: ``time.time()`` at which to stop.
        clock: Returns the current time (tests pass a fake one).
        verbose: Print the time left after each epoch.

    Attributes:
        stopped: True once the budget stopped training.
        epochs_completed: Epochs that ran to their end.
    """

    def __init__(
        self, deadline: float, clock: Callable[[], float] = time.time, verbose: bool = True
    ):
        super().__init__()
        self.deadline, self.clock, self.verbose = deadline, clock, verbose
        self.stopped, self.epochs_completed = False, 0
        self._epoch_start, self._longest_epoch, self._cut_short = 0.0, 0.0, False

    def on_epoch_begin(self, epoch, logs=None):  # noqa: D102
        self._epoch_start = self.clock()

    def on_train_batch_end(self, batch, logs=None):  # noqa: D102
        if self.clock() >= self.deadline:
            self._stop()
            self._cut_short = True

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        now = self.clock()
        self._longest_epoch = max(self._longest_epoch, now - self._epoch_start)
        if not self._cut_short:
            self.epochs_completed += 1
        left = self.deadline - now
        last_epoch = epoch + 1 >= self.params.get("epochs", float("inf"))
        if left < self._longest_epoch and not last_epoch:
            self._stop()
        if self.verbose:
            status = "budget spent, stopping" if self.stopped else "left in the time budget"
            print(f"epoch {epoch + 1}: {format_duration(max(left, 0))} {status}")

    def _stop(self) -> None:
        self.stopped = True
        self.model.stop_training = True


class SearchBudget:
    """The wall time a search project has spent, kept across reruns in ``budget.json``.

    Args:
        path: ``results/<project>/budget.json``.
        seconds: This run's budget for the whole project (earlier runs' time included).
        clock: Returns the current time.
    """

    def __init__(self, path: Path, seconds: float, clock: Callable[[], float] = time.time):
        self.path, self.seconds, self.clock = Path(path), float(seconds), clock
        self.spent_before = self._read_spent()
        self.started = clock()

    def _read_spent(self) -> float:
        if not self.path.is_file():
            return 0.0
        try:
            return float(json.loads(self.path.read_text())["spent_seconds"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"{self.path}: not a budget record (delete it to start afresh)"
            ) from None

    def spent(self) -> float:
        """Seconds spent by this project so far, this run included."""
        return self.spent_before + self.clock() - self.started

    def left(self) -> float:
        """Seconds left (0 once spent)."""
        return max(0.0, self.seconds - self.spent())

    def deadline(self) -> float:
        """The wall-clock time at which the budget runs out."""
        return self.clock() + self.left()

    def save(self, write_json: Callable[[Path, dict], None]) -> None:
        """Records the time spent (call after each trial and at the end)."""
        write_json(
            self.path, {"spent_seconds": round(self.spent(), 1), "budget_seconds": self.seconds}
        )
