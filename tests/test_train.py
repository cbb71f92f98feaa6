"""The real ``train.py`` command line: the final model and its metrics, errors, time budgets, K-fold."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, run, second_run_while_the_first_holds_its_lock, train_command
from shipseg.data import airbus
from shipseg.train import run as retraining
from waiting import wait_until


def test_train_best_writes_the_final_model_and_honest_metrics(trained_project):
    project, result = trained_project
    final = project / "final"
    for name in retraining.FINAL_FILES:  # what train.py says it saved
        assert (final / name).is_file(), name
    config = json.loads((final / "config.json").read_text())
    best = json.loads((project / "best_hparams.json").read_text())
    assert config["hyperparameters"] == best["hyperparameters"]
    assert config["status"] == "complete" and config["input"]["size"] == 32
    assert set(config["postprocess"]) == {
        "threshold",
        "image_threshold",
        "min_ship_pixels",
        "flip_tta",
        "ship_threshold",
        "ship_shape",
    }
    assert config["postprocess"]["ship_shape"] in ("mask", "box")
    metrics = json.loads((final / "metrics.json").read_text())
    split = pd.read_csv(project / "split.csv")
    test = metrics["test"]
    assert test["images"] == (split.split == "test").sum()
    for name in ("dice", "dice_ship_images", "iou", "f2", "f2_no_ship_baseline", "ship_accuracy"):
        assert 0.0 <= test[name] <= 1.0, name
    # The baseline is the share of empty test images, computed on the same images.
    table = airbus.read_dataset(
        json.loads((project / "search_config.json").read_text())["data_dir"]
    )
    test_ids = set(split.ImageId[split.split == "test"])
    empty_share = (table[table.ImageId.isin(test_ids)].ship_count == 0).mean()
    assert test["f2_no_ship_baseline"] == pytest.approx(empty_share)
    history = pd.read_csv(final / "history.csv")
    assert len(history) == metrics["epochs_run"] <= 2
    assert {"loss", "val_dice", "val_f2"} <= set(history.columns)
    assert "no-ship baseline" in result.stdout
    assert not list(final.glob(".*partial")) and not list(final.glob(".*.tmp*"))


@pytest.mark.slow
def test_train_errors_are_one_line(finished_search, tmp_path):
    project, _ = finished_search
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"levels": 3}))
    cases = [
        (train_command(tmp_path / "empty", "--best"), "no finished search found"),
        (train_command(project.parent, "--best", "--project", "absent"), "no search here"),
        (
            train_command(project.parent, "--project", "tiny", "--hparams", str(bad_json)),
            "not valid JSON",
        ),
        (
            train_command(project.parent, "--project", "tiny", "--hparams", str(partial)),
            "missing base_filters",
        ),
    ]
    for command, message in cases:
        result = run(command)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


@pytest.fixture()
def project_copy(finished_search, tmp_path):
    """A private copy of the finished tiny search, for trainings that rewrite its folders."""
    project, _ = finished_search
    return shutil.copytree(
        project, tmp_path / "results" / "tiny", ignore=shutil.ignore_patterns("final")
    )


def train(project, *flags):
    command = [sys.executable, str(ROOT / "train.py"), "--results-dir", str(project.parent)]
    return run([*command, "--best", "--project", "tiny", "--verbose", "0", *flags])


@pytest.mark.slow
def test_a_training_budget_stops_early_and_keeps_the_best_epoch(project_copy):
    result = train(project_copy, "--epochs", "200", "--patience", "200", "--time-budget", "12s")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((project_copy / "final" / "metrics.json").read_text())
    assert metrics["stopped_by_budget"] and 1 <= metrics["epochs_run"] < 200
    assert metrics["train_seconds"] <= 12 + 5
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    config = json.loads((project_copy / "final" / "config.json").read_text())
    assert config["time_budget"] == "12s" and config["status"] == "complete"


@pytest.mark.slow
def test_k_fold_training_tests_every_train_and_val_image_once_and_resumes_finished_folds(
    project_copy,
):
    first = train(project_copy, "--epochs", "1", "--folds", "3", "--only-folds", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "1 of 3 folds finished" in first.stdout and "--only-folds 0 2" in first.stdout
    kept = (project_copy / "folds" / "fold_1" / "model.keras").stat().st_mtime_ns
    result = train(project_copy, "--epochs", "1", "--folds", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Fold 1: finished earlier with this configuration, kept" in result.stdout
    assert (project_copy / "folds" / "fold_1" / "model.keras").stat().st_mtime_ns == kept
    summary = json.loads((project_copy / "folds" / "summary.json").read_text())
    split = pd.read_csv(project_copy / "split.csv")
    assert len(summary["folds"]) == 3 and summary["complete"]
    assert (
        sum(row["test_images"] for row in summary["folds"])
        == split.split.isin(["train", "val"]).sum()
    )
    for row in summary["folds"]:
        low, high = row["gain_interval"]
        assert low <= row["gain"] <= high
        assert (
            row["train_images"] + row["val_images"] + row["test_images"]
            == split.split.isin(["train", "val"]).sum()
        )
    gains = [row["gain"] for row in summary["folds"]]
    assert summary["gain"]["mean"] == pytest.approx(sum(gains) / 3)
    assert "folds above the baseline" in result.stdout
    for fold in range(3):
        assert (project_copy / "folds" / f"fold_{fold}" / "model.keras").is_file()


@pytest.mark.slow
def test_a_training_killed_midway_leaves_the_previous_final_model_and_is_named_next_time(
    project_copy,
):
    assert train(project_copy, "--epochs", "1").returncode == 0
    final = project_copy / "final"
    before = {path.name: path.read_bytes() for path in final.iterdir() if path.is_file()}
    command = [sys.executable, str(ROOT / "train.py"), "--results-dir", str(project_copy.parent)]
    process = subprocess.Popen(
        [*command, "--best", "--project", "tiny", "--epochs", "200", "--patience", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging = project_copy / "final.partial"
    # The checkpoint is written atomically: once it is there, the first epoch is kept.
    checkpoint = staging / "model.keras"
    wait_until(checkpoint.exists, "the first epoch's checkpoint", timeout=300, process=process)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the training ended before it could be killed"
    assert (staging / "model.keras").exists()
    after = {path.name: path.read_bytes() for path in final.iterdir() if path.is_file()}
    assert after == before
    result = train(project_copy, "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final.partial: an earlier run was interrupted" in result.stdout
    assert not staging.exists()


@pytest.mark.slow
def test_a_second_training_of_a_project_in_training_is_refused_and_the_first_finishes(
    project_copy,
):
    command = [sys.executable, str(ROOT / "train.py"), "--results-dir", str(project_copy.parent)]
    command += ["--best", "--project", "tiny", "--verbose", "0", "--epochs", "3"]
    first, second, stderr = second_run_while_the_first_holds_its_lock(
        command, project_copy / "final.partial"
    )
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((project_copy / "final" / "config.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_fewer_than_three_folds_are_refused_in_one_line(project_copy):
    for folds in ("2", "0"):
        result = train(project_copy, "--folds", folds)
        assert result.returncode == 2 and "--folds must be at least 3" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
