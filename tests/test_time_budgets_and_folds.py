"""The command lines with a time budget (search and train) and K-fold training."""

import json
import shutil
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT, run, search_command


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


def test_a_bad_search_budget_is_one_line(synthetic_dataset, tmp_path):
    result = run(search_command(synthetic_dataset, tmp_path, "--time-budget", "45"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("search.py: error: --time-budget")


def test_a_training_budget_stops_early_and_keeps_the_best_epoch(project_copy):
    result = train(project_copy, "--epochs", "200", "--patience", "200", "--time-budget", "12s")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((project_copy / "final" / "metrics.json").read_text())
    assert metrics["stopped_by_budget"] and 1 <= metrics["epochs_run"] < 200
    assert metrics["train_seconds"] <= 12 + 5
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    config = json.loads((project_copy / "final" / "config.json").read_text())
    assert config["time_budget"] == "12s" and config["status"] == "complete"


def test_k_fold_training_tests_every_train_and_val_image_once(project_copy):
    result = train(project_copy, "--epochs", "1", "--folds", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((project_copy / "folds" / "summary.json").read_text())
    split = pd.read_csv(project_copy / "split.csv")
    assert len(summary["folds"]) == 3
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
