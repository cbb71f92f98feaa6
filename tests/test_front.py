"""Accuracy against latency (shipseg/search/front.py) and choosing a trial within a budget."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from shipseg.core import errors
from shipseg.model import space
from shipseg.search import evidence, front, report, trials
from shipseg.train.run import TrainOptions


def test_the_front_keeps_exactly_the_points_no_other_beats_on_both():
    scores = np.array([0.90, 0.85, 0.80, 0.70, 0.84, 0.90])
    millis = np.array([400, 100, 100, 20, 300, 500])
    # 0.84 at 300 ms loses to 0.85 at 100 ms; 0.80 at 100 ms to 0.85 at the same speed;
    # 0.90 at 500 ms to 0.90 at 400 ms.
    assert front.non_dominated(scores, millis).tolist() == [True, True, False, True, False, False]


def test_two_trials_equal_on_both_are_both_on_the_front():
    assert front.non_dominated(np.array([0.5, 0.5]), np.array([10, 10])).tolist() == [True, True]


def table(rows) -> pd.DataFrame:
    """trials.csv-like rows: (id, status, score, ms), every hyperparameter at its default."""
    defaults = {d.name: d.start_value() for d in space.DEFAULT_SPACE}
    frame = pd.DataFrame(rows, columns=["trial_id", "status", "val_f2_tuned", front.LATENCY_COLUMN])
    frame = frame.assign(
        **defaults, epochs=2, best_epoch=2, continued_from="", latency_format="keras"
    )
    return frame.assign(
        latency_p95_ms=frame[front.LATENCY_COLUMN] * 1.1, latency_images_per_s=1000 / frame[front.LATENCY_COLUMN],
        latency_serving_batch=2, latency_image_size=768, gflops=1.0, parameters=1000, file_mib=0.1,
    )  # fmt: skip


def test_the_front_table_leaves_out_untrained_and_untimed_trials_and_sorts_by_speed():
    rows = [
        ("0000", "COMPLETED", 0.8, 300.0),
        ("0001", "COMPLETED", 0.7, 50.0),
        ("0002", trials.OVER_LATENCY_BUDGET, np.nan, 900.0),
        ("0003", "FAILED", np.nan, np.nan),
        ("0004", "COMPLETED", 0.6, 80.0),
    ]
    result = front.front_table(table(rows), "val_f2_tuned")
    assert result.trial_id.tolist() == ["0001", "0004", "0000"]
    assert result.on_front.tolist() == [True, False, True]


def project(tmp_path, rows, start_levels=None):
    """A search's folder: config, trials.csv and per-image scores that follow each score."""
    frame = table(rows)
    if start_levels is not None:
        frame.loc[frame.trial_id != "0000", "levels"] = start_levels + 1
    start = {d.name: d.start_value() for d in space.DEFAULT_SPACE}
    config = {"objective": "val_f2_tuned", "start_values": start, "max_latency": None}
    (tmp_path / "search_config.json").write_text(json.dumps(config))
    frame.to_csv(tmp_path / "trials.csv", index=False)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 108)
    for trial_id, score in zip(frame.trial_id, frame.val_f2_tuned, strict=True):
        folder = tmp_path / "tuner" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        shifted = np.clip(base + (0 if np.isnan(score) else score - 0.5), 0, 1)
        pd.DataFrame({"ImageId": range(108), "f2_tuned": shifted}).to_csv(
            folder / evidence.IMAGE_SCORES, index=False
        )
    return tmp_path


def test_the_best_trial_within_a_budget_is_written_for_train_to_read(tmp_path):
    rows = [
        ("0000", "COMPLETED", 0.5, 300.0),
        ("0001", "COMPLETED", 0.9, 250.0),
        ("0002", "COMPLETED", 0.8, 40.0),
        ("0003", "COMPLETED", 0.6, 30.0),
    ]
    folder = project(tmp_path, rows, start_levels=4)
    path = trials.choose_trial(folder, None, 100.0)
    chosen = json.loads(path.read_text())
    assert path.name == "best_hparams_within_100ms.json" and chosen["trial_id"] == "0002"
    assert chosen["chosen_because"].startswith("within 100 ms (40.0 ms)")
    assert set(chosen["hyperparameters"]) == {d.name for d in space.DEFAULT_SPACE}


def test_a_budget_no_trial_meets_names_the_fastest_trial(tmp_path):
    folder = project(
        tmp_path, [("0000", "COMPLETED", 0.5, 300.0), ("0001", "COMPLETED", 0.9, 250.0)]
    )
    with pytest.raises(errors.UserError, match=r"fastest: 250\.0 ms"):
        trials.choose_trial(folder, None, 100.0)


def test_a_trial_over_the_budget_is_never_the_best_within_it(tmp_path):
    rows = [
        ("0000", "COMPLETED", 0.5, 90.0),
        (
            "0001",
            trials.OVER_LATENCY_BUDGET,
            0.99,
            20.0,
        ),  # a score it cannot have: its status rules
    ]
    chosen = json.loads(trials.choose_trial(project(tmp_path, rows), None, 100.0).read_text())
    assert chosen["trial_id"] == "0000"


def test_any_trial_can_be_named_and_an_unknown_one_is_listed_against_the_known(tmp_path):
    folder = project(tmp_path, [("0000", "COMPLETED", 0.5, 90.0), ("0001", "COMPLETED", 0.6, 80.0)])
    assert json.loads(trials.choose_trial(folder, "0001", None).read_text())["trial_id"] == "0001"
    with pytest.raises(errors.UserError, match="no trial 0009 .trials: 0000, 0001"):
        trials.choose_trial(folder, "0009", None)


def test_the_report_draws_the_front_and_lists_its_trials(tmp_path):
    rows = [
        ("0000", "COMPLETED", 0.5, 300.0),
        ("0001", "COMPLETED", 0.9, 250.0),
        ("0002", "COMPLETED", 0.8, 40.0),
        ("0003", trials.OVER_LATENCY_BUDGET, np.nan, 900.0),
    ]
    folder = project(tmp_path, rows)
    frame = trials.read_trials(folder)
    names = [d.name for d in space.DEFAULT_SPACE]
    verdict = evidence.judge_winner(frame, "val_f2_tuned", folder, None)
    text = report.write_report(frame, "val_f2_tuned", names, folder, verdict, 500.0).read_text()
    section = text[text.index("## Accuracy against latency") :]
    assert "![front](front.png)" in section and "The front, 2 of 3 timed trials" in section
    assert "| 0002 |" in section and "| 0001 |" in section and "| 0000 |" not in section
    assert "Latency budget 500 ms: 1 trial over it, never trained." in section
    assert (folder / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_latency_budget_for_training_needs_best_and_a_duration():
    with pytest.raises(errors.UserError, match="--max-latency goes with --best"):
        TrainOptions(hparams="h.json", max_latency="100ms")
    with pytest.raises(errors.UserError, match="--max-latency: latency 'soon'"):
        TrainOptions(best=True, max_latency="soon")
    assert TrainOptions(best=True, max_latency="0.1s").max_latency_ms == pytest.approx(100.0)
