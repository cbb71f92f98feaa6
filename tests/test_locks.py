"""One writer per folder (shipseg.core.locks): a second run stops at once, a killed run frees it."""

import signal
import subprocess
import sys

import pytest

from conftest import ROOT, inference_command, run, search_command, train_command
from shipseg.core import errors, locks
from waiting import wait_for_line


@pytest.fixture()
def holder():
    """Starts a process that holds a folder's lock until the test ends (or kills it)."""
    processes = []

    def hold(folder):
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time\n"
                f"sys.path.insert(0, {str(ROOT)!r})\n"
                "from shipseg.core import locks\n"
                "with locks.hold(sys.argv[1], '--project'):\n"
                "    print('held', flush=True)\n"
                "    time.sleep(600)  # holds the lock until the test kills it\n",
                str(folder),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)  # killed at the end, even when it never reports
        wait_for_line(process, "held", f"the lock on {folder} held", timeout=60)
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_second_holder_is_refused_with_the_first_ones_process_and_command(holder, tmp_path):
    first = holder(tmp_path / "project")
    with pytest.raises(errors.UserError) as refused:
        with locks.hold(tmp_path / "project", "--project"):
            pass
    message = str(refused.value)
    assert f"process {first.pid}" in message and "python -c" in message
    assert "use another --project" in message


def test_a_killed_holder_leaves_no_stale_lock(holder, tmp_path):
    first = holder(tmp_path / "project")
    first.send_signal(signal.SIGKILL)
    first.wait()
    with locks.hold(tmp_path / "project", "--project"):
        pass  # free at once


def test_the_lock_is_released_when_the_block_ends_even_by_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        with locks.hold(tmp_path, "--out"):
            raise RuntimeError("the run failed")
    with locks.hold(tmp_path, "--out"):
        pass


@pytest.mark.slow
def test_a_second_search_training_or_inference_on_a_busy_folder_stops_with_one_line(
    holder, trained_project, synthetic_dataset, tmp_path
):
    project, _ = trained_project
    first = holder(project)
    commands = [
        search_command(synthetic_dataset, project.parent),
        train_command(project.parent, "--best", "--project", project.name),
    ]
    for command in commands:
        result = run(command)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"in use by process {first.pid}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    out = tmp_path / "predictions"
    holder(out)
    result = run(
        inference_command(
            project.parent,
            str(synthetic_dataset / "test_v2"),
            "--model",
            str(project / "final" / "model.keras"),
            "--out",
            str(out),
        )
    )
    assert result.returncode == 2 and "in use by process" in result.stderr, result.stderr[-2000:]
