"""The real ``search.py`` command line on a tiny synthetic dataset."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

import hypermodel
import search
from conftest import ROOT, run, search_command, second_run_while_the_first_holds_its_lock
from shipseg.core import errors
from shipseg.search import run as search_run
from shipseg.search import settings as search_settings
from shipseg.search.settings import settings_from
from waiting import wait_until


def event_tags(folder: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for path in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_search_writes_every_result_file(finished_search, synthetic_dataset):
    project, result = finished_search
    config = json.loads((project / "search_config.json").read_text())
    assert config["data_dir"] == str(Path(synthetic_dataset).resolve())
    assert config["objective"] == "val_dice" and config["max_epochs"] == 2 and config["factor"] == 2
    assert config["input"]["size"] == 32 and config["space"]["levels"] == "2"
    assert Path(config["split_file"]) == (project / "split.csv").resolve()
    split = pd.read_csv(project / "split.csv")
    assert set(split.split) == {"train", "val", "test"}

    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    # Hyperband with max_epochs=2, factor=2: a bracket of 2 one-epoch trials plus the promoted
    # one, and a bracket of 2 two-epoch trials.
    assert len(trials) >= 4
    for column in [
        "trial_id",
        "val_dice",
        "status",
        "epochs",
        "duration_s",
        *[d.name for d in hypermodel.DEFAULT_SPACE],
    ]:
        assert column in trials.columns, column
    assert (trials.status == "COMPLETED").all()
    assert trials.val_dice.notna().all() and (trials.duration_s > 0).all()
    # Each trial ran (and was measured) in a process of its own.
    assert ((trials.fit_s > 0) & (trials.fit_s < trials.duration_s)).all()
    assert (trials.peak_memory_mib > 50).all()
    assert trials.val_dice.is_monotonic_decreasing

    summary = json.loads((project / "search_summary.json").read_text())
    best = json.loads((project / "best_hparams.json").read_text())
    # The winner, or the start when the winner cannot be told apart from it.
    verdict = summary["winner"]
    assert verdict["winner"] == trials.trial_id[0]
    assert best["trial_id"] == verdict["chosen"] in (verdict["winner"], verdict["start"])
    assert best["chosen_because"] == verdict["chosen_because"]
    chosen = trials.set_index("trial_id").loc[best["trial_id"]]
    assert best["score"] == pytest.approx(chosen.val_dice)
    assert set(best["hyperparameters"]) == {d.name for d in hypermodel.DEFAULT_SPACE}
    assert best["hyperparameters"]["levels"] == 2
    assert (project / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## What mattered" in (project / "report.md").read_text()
    assert summary["completed"] == len(trials)
    assert summary["fit_seconds"] == pytest.approx(trials.fit_s.sum(), abs=0.05)
    assert summary["fit_seconds"] < summary["trial_seconds"] <= summary["wall_seconds"] + 0.05
    assert f"Best {min(5, len(trials))} of {len(trials)} trials" in result.stdout


def test_tensorboard_gets_scalars_hparams_and_mask_images(finished_search):
    project, _ = finished_search
    trial_logs = [path for path in (project / "logs").iterdir() if path.is_dir()]
    assert trial_logs, "no per-trial TensorBoard folder"
    tags = event_tags(project / "logs")
    assert "epoch_loss" in tags and "epoch_dice" in tags and "epoch_f2" in tags
    assert any(tag.startswith("validation_image_") for tag in tags)
    assert any("hparams" in tag for tag in tags)


def test_every_trial_records_how_fast_its_model_is(finished_search):
    project, _ = finished_search
    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    assert (trials.latency_format == "keras").all() and (trials.latency_runs == 3).all()
    assert (trials.latency_median_ms > 0).all()
    assert (trials.latency_p95_ms >= trials.latency_median_ms).all()
    assert (trials.latency_images_per_s > 0).all() and (trials.gflops > 0).all()
    assert (trials.parameters > 0).all() and (trials.file_mib > 0).all()
    assert not trials.over_latency_budget.any()
    summary = json.loads((project / "search_summary.json").read_text())
    assert summary["front"] and set(summary["front"]) <= set(trials.trial_id)
    assert "## Accuracy against latency" in (project / "report.md").read_text()
    assert (project / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency_median_ms" in event_tags(project / "logs")


@pytest.mark.slow
def test_resuming_a_finished_search_keeps_every_trials_timing(finished_search, tmp_path):
    project, _ = finished_search
    shutil.copytree(project, tmp_path / "tiny")
    columns = ["trial_id", "latency_median_ms", "latency_p95_ms", "gflops", "parameters"]
    before = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})[columns]
    config = json.loads((project / "search_config.json").read_text())
    rerun = run(search_command(config["data_dir"], tmp_path, "--max-epochs", "2", "--factor", "2"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})[columns]
    pd.testing.assert_frame_equal(
        before.sort_values("trial_id").reset_index(drop=True),
        after.sort_values("trial_id").reset_index(drop=True),
    )


@pytest.mark.slow
def test_train_retrains_the_best_trial_within_a_latency_budget_or_a_named_trial(
    finished_search, tmp_path
):
    project, _ = finished_search
    shutil.copytree(project, tmp_path / "tiny")
    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    command = [sys.executable, str(ROOT / "train.py"), "--project", "tiny", "--results-dir",
               str(tmp_path), "--epochs", "1", "--verbose", "0"]  # fmt: skip
    budget = f"{trials.latency_median_ms.max() * 10:.3f}ms"
    result = run([*command, "--best", "--max-latency", budget])
    assert result.returncode == 0, result.stderr[-3000:]
    path = next((tmp_path / "tiny").glob("best_hparams_within_*ms.json"))
    config = json.loads((tmp_path / "tiny" / "final" / "config.json").read_text())
    assert config["hyperparameters_from"] == str(path.resolve())
    chosen = json.loads(path.read_text())
    assert chosen["chosen_because"].startswith(f"within {float(budget[:-2]):g} ms")
    last = trials.trial_id.iloc[-1]
    result = run([*command, "--trial", last])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Training trial {last} (named with --trial)" in result.stdout
    too_fast = run([*command, "--best", "--max-latency", "0.00001ms"])
    assert too_fast.returncode == 2 and "no completed trial" in too_fast.stderr
    assert "fastest:" in too_fast.stderr and len(too_fast.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_model_over_the_latency_budget_is_not_trained_and_cannot_be_best(
    synthetic_dataset, tmp_path
):
    result = run(search_command(synthetic_dataset, tmp_path, "--max-epochs", "2", "--factor", "2",
                                "--max-latency", "0.0001ms"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    project = tmp_path / "tiny"
    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    assert (trials.status == "OVER_LATENCY_BUDGET").all() and trials.over_latency_budget.all()
    assert (trials.fit_s == 0).all() and trials.val_dice.isna().all()
    assert (trials.latency_median_ms > 0.0001).all()
    assert not (project / "best_hparams.json").exists()
    summary = json.loads((project / "search_summary.json").read_text())
    assert summary["over_latency_budget"] == len(trials) and summary["completed"] == 0
    train = run([sys.executable, str(ROOT / "train.py"), "--best", "--project", "tiny",
                 "--results-dir", str(tmp_path)])  # fmt: skip
    assert train.returncode == 2 and "best_hparams.json: file not found" in train.stderr


@pytest.mark.slow
def test_bad_settings_give_one_line_errors(synthetic_dataset, tmp_path):
    cases = [
        (["--data-dir", str(tmp_path / "nowhere")], "data directory does not exist"),
        (
            ["--data-dir", str(synthetic_dataset), "--hp", "depth=3"],
            "unknown hyperparameter 'depth'",
        ),
        (["--data-dir", str(synthetic_dataset), "--input-size", "100"], "cannot go through"),
        (
            ["--data-dir", str(synthetic_dataset), "--max-epochs", "0"],
            "--max-epochs must be at least 1",
        ),
    ]
    for arguments, message in cases:
        result = run(
            [sys.executable, str(ROOT / "search.py"), "--results-dir", str(tmp_path), *arguments]
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(finished_search, synthetic_dataset):
    project, _ = finished_search
    result = run(
        search_command(synthetic_dataset, project.parent, "--max-epochs", "3", "--factor", "2")
    )
    assert result.returncode == 2
    assert "searched with other settings (max_epochs)" in result.stderr


@pytest.mark.slow
def test_multi_gpu_trains_every_trial_under_a_mirrored_strategy(synthetic_dataset, tmp_path):
    # Without a GPU, MirroredStrategy mirrors over the CPU: one replica, the same code path
    # (model, optimizer and a promoted trial's weights loaded inside the strategy's scope).
    command = search_command(synthetic_dataset, tmp_path, "--max-epochs", "2", "--factor", "2")
    result = run([*command, "--multi-gpu"])
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})
    assert (trials.status == "COMPLETED").all() and trials.val_dice.notna().all()
    assert (trials.epochs == 2).any(), "no promoted trial, so no warm start was tested"
    for trial_id in trials.trial_id:
        timing = json.loads(
            (tmp_path / "tiny" / "tuner" / f"trial_{trial_id}" / "timing.json").read_text()
        )
        assert timing["strategy"] == "MirroredStrategy (1 replicas)"


def completed_trials(tuner_dir: Path) -> dict[str, float]:
    done = {}
    for path in tuner_dir.glob("trial_*/trial.json"):
        trial = json.loads(path.read_text())
        if trial["status"] == "COMPLETED":
            done[trial["trial_id"]] = trial["score"]
    return done


@pytest.mark.slow
def test_a_killed_search_resumes_without_losing_completed_trials(synthetic_dataset, tmp_path):
    command = search_command(synthetic_dataset, tmp_path, "--max-epochs", "4", "--factor", "2")
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    tuner_dir = tmp_path / "tiny" / "tuner"
    wait_until(
        lambda: len(completed_trials(tuner_dir)) >= 2,
        "two completed trials",
        timeout=300,
        process=process,
        interval=0.5,
    )
    helpers = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()
    before = completed_trials(tuner_dir)
    assert len(before) >= 2, "the search did not complete two trials before the kill"
    # The running trial's process and the fork server go with the search they served.
    assert helpers, "no trial process was running"
    _, alive = psutil.wait_procs(helpers, timeout=20)
    assert not alive, f"left running after the search was killed: {alive}"

    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str}).set_index(
        "trial_id"
    )
    for trial_id, score in before.items():
        assert trials.status[trial_id] == "COMPLETED"
        assert trials.val_dice[trial_id] == pytest.approx(score)
    assert len(trials) > len(before)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_with_a_chief_and_two_workers(synthetic_dataset, tmp_path):
    command = search_command(synthetic_dataset, tmp_path, "--max-epochs", "2", "--factor", "2")
    network = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port())}
    processes = {
        tuner_id: subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **network, "KERASTUNER_TUNER_ID": tuner_id},
        )
        for tuner_id in ("chief", "tuner0", "tuner1")
    }
    try:
        outputs = {
            tuner_id: process.communicate(timeout=600) for tuner_id, process in processes.items()
        }
    finally:
        for process in processes.values():
            process.kill()
    for tuner_id, process in processes.items():
        assert process.returncode == 0, f"{tuner_id}: {outputs[tuner_id][1][-3000:]}"
    trials = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})
    assert len(trials) >= 4 and (trials.status == "COMPLETED").all()
    assert set(trials.tuner_id) <= {"tuner0", "tuner1"}
    assert "Worker tuner0 finished" in outputs["tuner0"][0]
    assert (tmp_path / "tiny" / "best_hparams.json").is_file()


@pytest.mark.parametrize(
    ("variables", "role"),
    [
        ({}, "single"),
        (
            {
                "KERASTUNER_TUNER_ID": "chief",
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "1",
            },
            "chief",
        ),
        (
            {
                "KERASTUNER_TUNER_ID": "chief0",
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "1",
            },
            "chief",
        ),
        (
            {
                "KERASTUNER_TUNER_ID": "tuner3",
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "1",
            },
            "worker",
        ),
    ],
)
def test_tuner_role_follows_keras_tuner(monkeypatch, variables, role):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert search_run.tuner_role() == role


def test_half_configured_distribution_is_refused(monkeypatch):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    monkeypatch.delenv("KERASTUNER_ORACLE_IP", raising=False)
    with pytest.raises(errors.UserError, match="KERASTUNER_ORACLE_IP"):
        search_run.tuner_role()


@pytest.mark.slow
def test_a_search_budget_stops_the_search_and_a_rerun_resumes_or_extends_it(
    synthetic_dataset, tmp_path
):
    results = tmp_path / "results"
    command = search_command(synthetic_dataset, results, "--max-epochs", "8", "--factor", "2")
    start = time.time()
    first = run([*command, "--time-budget", "25s"])
    elapsed = time.time() - start
    assert first.returncode == 0, first.stderr[-3000:]
    project = results / "tiny"
    spent = json.loads((project / "budget.json").read_text())["spent_seconds"]
    # The budget counts from the tuner's start; the last epoch may end a few seconds past it.
    assert 20 <= spent <= 25 + 15 and elapsed < 25 + 60
    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    assert "stopped_by_budget" in trials and "epochs_completed" in trials
    assert trials.stopped_by_budget.sum() <= 1  # only the trial running at the deadline
    assert "left in the time budget" in first.stdout

    again = run([*command, "--time-budget", "25s"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Time budget spent" in again.stdout
    assert len(pd.read_csv(project / "trials.csv")) == len(trials)

    extended = run([*command, "--time-budget", "50s"])
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert len(pd.read_csv(project / "trials.csv")) > len(trials)


@pytest.mark.slow
def test_a_bad_search_budget_is_one_line(synthetic_dataset, tmp_path):
    result = run(search_command(synthetic_dataset, tmp_path, "--time-budget", "45"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("search.py: error: --time-budget")


@pytest.mark.slow
def test_a_damaged_keras_tuner_state_is_explained_on_resume(finished_search, tmp_path):
    project, _ = finished_search
    copy = shutil.copytree(project, tmp_path / "tiny")
    config = json.loads((copy / "search_config.json").read_text())
    trial_file = next((copy / "tuner").glob("trial_*/trial.json"))
    trial_file.write_text(trial_file.read_text()[:20])  # as an in-place write cut short leaves it
    result = run(search_command(config["data_dir"], tmp_path, "--max-epochs", "2", "--factor", "2"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Keras Tuner's saved state cannot be read" in result.stderr
    assert "--overwrite" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def oracle_saved_or_search_ended(oracle: Path, seen: int, process: subprocess.Popen) -> bool:
    """Whether the search rewrote ``oracle`` since its time ``seen``, or finished on its own."""
    return process.poll() is not None or (oracle.exists() and oracle.stat().st_mtime_ns != seen)


@pytest.mark.slow
def test_a_search_killed_again_and_again_loses_nothing_and_finishes(synthetic_dataset, tmp_path):
    """Fault injection: kill -9 at random moments and right after Keras Tuner saves its oracle."""
    command = search_command(synthetic_dataset, tmp_path, "--max-epochs", "4", "--factor", "2")
    tuner_dir = tmp_path / "tiny" / "tuner"
    oracle = tuner_dir / "oracle.json"
    rng = random.Random(7)
    kept: dict[str, float] = {}
    for attempt in range(4):
        seen = oracle.stat().st_mtime_ns if oracle.exists() else 0
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if attempt % 2:  # kill at a random moment: this wait is the fault injected
            try:
                process.wait(timeout=rng.uniform(5, 25))
            except subprocess.TimeoutExpired:
                pass
        else:  # kill right as the oracle has been (or is being) written
            saved = functools.partial(oracle_saved_or_search_ended, oracle, seen, process)
            wait_until(saved, "the search to save its oracle", timeout=300, interval=0.01)
        process.kill()
        process.wait()
        now = completed_trials(tuner_dir)  # every state file still reads
        assert all(now.get(trial) == pytest.approx(score) for trial, score in kept.items())
        kept = now
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})
    trials = trials.set_index("trial_id")
    assert (trials.status == "COMPLETED").all()
    for trial_id, score in completed_trials(tuner_dir).items():
        assert trials.val_dice[trial_id] == pytest.approx(score)
    assert set(kept) <= set(trials.index)
    for path in tuner_dir.rglob("*.json"):
        json.loads(path.read_text())  # no damaged state file anywhere


@pytest.mark.slow
def test_a_second_search_on_a_running_project_is_refused_and_the_first_finishes(
    synthetic_dataset, tmp_path
):
    command = search_command(synthetic_dataset, tmp_path, "--max-epochs", "2", "--factor", "2")
    first, second, stderr = second_run_while_the_first_holds_its_lock(
        command, tmp_path / "tiny" / "tuner"
    )
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, stderr[-3000:]
    trials = pd.read_csv(tmp_path / "tiny" / "trials.csv")
    assert len(trials) >= 4 and (trials.status == "COMPLETED").all()


@pytest.mark.slow
def test_report_rewrites_a_projects_report_and_explains_a_missing_one(finished_search, tmp_path):
    project, _ = finished_search
    copy = shutil.copytree(project, tmp_path / "tiny")
    (copy / "report.md").unlink()
    report = [sys.executable, str(ROOT / "search.py"), "--results-dir", str(tmp_path), "--report"]
    result = run([*report, "--project", "tiny"])
    assert result.returncode == 0 and (copy / "report.md").is_file(), result.stderr[-2000:]
    result = run([*report, "--project", "nothing-here"])
    assert result.returncode == 2 and "no trials to report on" in result.stderr


@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
@pytest.mark.slow
def test_random_and_bayesian_search_run_resume_and_grow_with_max_trials(
    synthetic_dataset, tmp_path, algorithm
):
    command = search_command(synthetic_dataset, tmp_path, "--tuner", algorithm, "--max-epochs", "2")
    first = run([*command, "--max-trials", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    project = tmp_path / "tiny"
    assert json.loads((project / "search_config.json").read_text())["tuner"] == algorithm
    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 2 and (trials.status == "COMPLETED").all()
    assert (trials.epochs == 2).all() and trials.bracket.isna().all()
    assert (project / "best_hparams.json").is_file()
    done = completed_trials(project / "tuner")

    initial = ["--initial-trials", "3"] if algorithm == "bayesian" else []
    grown = run([*command, "--max-trials", "3", *initial])
    assert grown.returncode == 0, grown.stderr[-3000:]
    after = completed_trials(project / "tuner")
    assert len(after) == 3 and all(after[trial] == score for trial, score in done.items())
    if algorithm == "bayesian":  # the resumed oracle takes this run's count of random trials
        oracle = json.loads((project / "tuner" / "oracle.json").read_text())
        assert oracle["num_initial_points"] == 3

    other = run(search_command(synthetic_dataset, tmp_path, "--max-epochs", "2"))
    assert other.returncode == 2
    assert "searched with other settings (tuner)" in other.stderr


def test_bayesian_search_hands_over_to_its_gaussian_process_after_a_third_of_its_trials():
    def initial_points(*flags):
        args = search.build_parser().parse_args(["--tuner", "bayesian", *flags])
        return search_settings.oracle_settings(settings_from(vars(args)))["num_initial_points"]

    # Keras Tuner's own default, 3 per hyperparameter (36), would make 10 trials a random search.
    assert initial_points() == 3
    assert initial_points("--max-trials", "30") == 10
    assert initial_points("--max-trials", "4") == 2
    assert initial_points("--max-trials", "30", "--initial-trials", "5") == 5
    hyperband = settings_from(vars(search.build_parser().parse_args([])))
    assert "num_initial_points" not in search_settings.oracle_settings(hyperband)
    with pytest.raises(errors.UserError, match="--initial-trials is for --tuner bayesian only"):
        settings_from(vars(search.build_parser().parse_args(["--initial-trials", "3"])))


def _split(groups: list[int], splits_: list[str]) -> pd.DataFrame:
    names = [f"{i:03d}.jpg" for i in range(len(groups))]
    return pd.DataFrame({"ImageId": names, "split": splits_, "group": groups})


def test_a_split_without_validation_images_names_the_overlap_groups_when_they_are_the_cause():
    from shipseg.data.inputs import InputConfig
    from shipseg.search.run import split_problem
    from shipseg.search.settings import SearchSettings

    settings = SearchSettings(data_dir=None, project="p", input_config=InputConfig(), hp=())
    images = pd.DataFrame({"ImageId": ["000.jpg"], "ship_count": [1]})
    duplicated = _split([0] * 9 + [1], ["train"] * 9 + ["test"])
    message = split_problem(duplicated, images, images.iloc[:0], settings)
    assert "10 images fall in 2 overlap groups" in message
    assert "group 0: 9 images (e.g. 000.jpg)" in message and "--val-fraction" not in message
    many = _split(list(range(10)), ["train"] * 9 + ["test"])
    assert "a larger --val-fraction" in split_problem(many, images, images.iloc[:0], settings)


def test_the_first_trial_is_the_spaces_defaults_and_every_trial_keeps_its_image_scores(
    finished_search,
):
    from shipseg.search import evidence

    project, _ = finished_search
    start = json.loads((project / "search_config.json").read_text())["start_values"]
    assert start["levels"] == 2 and start["base_filters"] == 4  # the command's --hp win
    assert start["learning_rate"] == 1e-3 and start["batch_norm"] is True  # the defaults
    first = json.loads((project / "tuner" / "trial_0000" / "trial.json").read_text())
    values = first["hyperparameters"]["values"]
    assert {name: values[name] for name in start} == start
    trials = pd.read_csv(project / "trials.csv", dtype={"trial_id": str})
    done = trials[trials.status == "COMPLETED"].trial_id
    val_images = len(pd.read_csv(project / "split.csv").query("split == 'val'"))
    for trial_id in done:
        scores = evidence.image_scores(project, trial_id)
        assert scores is not None and len(scores) == val_images, trial_id
    report = (project / "report.md").read_text()
    assert "## How sure is the winner" in report and "Rank agreement of the first rung" in report
    summary = json.loads((project / "search_summary.json").read_text())
    assert summary["winner"]["winner"] == trials.trial_id.iloc[0]


def _settings(tmp_path, start_from=None, hp=()):
    from shipseg.data.inputs import InputConfig
    from shipseg.search.settings import SearchSettings

    return SearchSettings(
        data_dir=None, project="p", input_config=InputConfig(), hp=hp, start_from=start_from,
        results_dir=str(tmp_path),
    )  # fmt: skip


def test_start_from_reads_best_hparams_a_trial_json_or_a_plain_object(tmp_path):
    best = tmp_path / "best_hparams.json"
    best.write_text(json.dumps({"hyperparameters": {"levels": 3, "learning_rate": 5e-4}}))
    trial = tmp_path / "trial.json"
    trial.write_text(json.dumps({"hyperparameters": {"values": {"levels": 5, "tuner/epochs": 2}}}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"pixel_weight": 1, "levels": 3.0}))
    assert _settings(tmp_path, str(best)).start_values()["learning_rate"] == 5e-4
    assert _settings(tmp_path, str(trial)).start_values()["levels"] == 5
    values = _settings(tmp_path, str(plain)).start_values()
    assert values["pixel_weight"] == 1.0 and values["levels"] == 3
    assert isinstance(values["levels"], int) and values["batch_size"] == 8  # the rest: defaults
    assert _settings(tmp_path, str(best), hp=("levels=4",)).start_values()["levels"] == 4


def test_a_start_outside_the_space_is_a_one_line_error_naming_the_file_and_value(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"learning_rate": 0.5}))
    with pytest.raises(errors.UserError, match=r"outside.json: learning_rate=0.5 is outside"):
        _settings(tmp_path, str(outside)).start_values()
    with pytest.raises(errors.UserError, match="missing.json"):
        _settings(tmp_path, str(tmp_path / "missing.json")).start_values()


def test_a_project_searched_in_another_space_says_which_ranges_moved_and_how_to_resume(tmp_path):
    settings = _settings(tmp_path)
    record = settings.record()
    old_space = {**record["space"], "learning_rate": "0.0001:0.003 (log)"}
    (tmp_path / "search_config.json").write_text(json.dumps({**record, "space": old_space}))
    new = {**record, "space": {**record["space"], "learning_rate": "5e-05:0.001 (log)"}}
    with pytest.raises(errors.UserError) as raised:
        search_settings.check_resumable(tmp_path, new)
    message = str(raised.value)
    assert "learning_rate 0.0001:0.003 (log) -> 5e-05:0.001 (log)" in message
    assert "--hp learning_rate=0.0001:0.003" in message and "--overwrite" in message
