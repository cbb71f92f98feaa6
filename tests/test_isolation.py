"""Trial isolation: each call in a fresh process, failures kept apart."""

import os
import signal
import subprocess
import sys

import keras_tuner
import psutil
import pytest

from conftest import ROOT
from shipseg.search import isolation
from waiting import wait_for_line


def process_id() -> int:
    return os.getpid()


def fail_the_trial() -> None:
    raise keras_tuner.errors.FailedTrialError("the loss became NaN")


def die_abruptly() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_trials_run_in_fresh_processes_and_their_failures_are_kept():
    first, second = (
        isolation.run_in_fresh_process(process_id),
        isolation.run_in_fresh_process(process_id),
    )
    assert len({os.getpid(), first, second}) == 3
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="loss became NaN"):
        isolation.run_in_fresh_process(fail_the_trial)
    # Killed by the system (for memory, say): the trial fails, the search process lives on.
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="ended abruptly"):
        isolation.run_in_fresh_process(die_abruptly)
    assert isolation.run_in_fresh_process(process_id) != os.getpid()


def garbage_collector_counts() -> tuple[int, int]:
    import gc

    return gc.get_freeze_count(), len(gc.get_objects())


def test_the_garbage_collector_leaves_what_a_trial_process_inherits_alone():
    # Walking TensorFlow's objects takes about 0.2 s per full collection, several per build.
    frozen, tracked = isolation.run_in_fresh_process(garbage_collector_counts)
    assert frozen > 100_000
    assert tracked < frozen / 10


def cannot_get_ready() -> None:
    raise OSError("no space left on device")


def test_a_trial_process_that_cannot_get_ready_stops_the_search():
    with pytest.raises(keras_tuner.errors.FatalError, match="could not get ready.*no space"):
        isolation.run_in_fresh_process(process_id, prepare=cannot_get_ready)


def add(first: int, second: int) -> int:
    return first + second


def test_what_a_trial_process_prepared_comes_first_in_its_call():
    assert isolation.run_in_fresh_process(add, 2, prepare=add, prepare_arguments=(3, 4)) == 9


@pytest.mark.slow
def test_a_trial_process_ends_when_its_search_is_killed(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from shipseg.search import isolation\n"
        "def report_and_wait():\n"
        "    print('trial', os.getpid(), flush=True)\n"
        "    time.sleep(600)  # a long trial: the search is killed during it\n"
        "if __name__ == '__main__':\n"
        "    isolation.run_in_fresh_process(report_and_wait)\n"
    )
    search = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    trial = None
    try:
        # The trial process prints to the search's output (the fork server passes it on) once
        # it runs; the fork server imports TensorFlow first, which a busy machine makes slow.
        line = wait_for_line(search, "trial ", "the trial process running", timeout=300)
        trial = psutil.Process(int(line.split()[1]))
        search.kill()
        search.wait()
        try:
            trial.wait(timeout=10)
        except psutil.TimeoutExpired:
            pytest.fail(f"the trial process {trial.pid} outlived its killed search by 10 s")
    finally:
        search.kill()
        if trial is not None and trial.is_running():
            trial.kill()  # not left sleeping for ten minutes when the test fails


class UnpicklableError(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = __import__("threading").Lock()


def raise_unpicklable() -> None:
    raise UnpicklableError()


def test_an_error_that_cannot_travel_back_arrives_as_text_not_as_a_memory_kill():
    with pytest.raises(RuntimeError, match="UnpicklableError: holds a lock"):
        isolation.run_in_fresh_process(raise_unpicklable)
