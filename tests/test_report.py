"""The search report (shipseg.search.report): which hyperparameter mattered."""

import numpy as np
import pandas as pd

from shipseg.search import evidence, report

NAMES = ["levels", "learning_rate", "dropout", "pixel_loss", "batch_norm"]


def trials_where_only_the_learning_rate_matters(count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    learning_rate = 10 ** rng.uniform(-4, -2, count)
    return pd.DataFrame(
        {
            "trial_id": [f"{i:04d}" for i in range(count)],
            "status": "COMPLETED",
            "levels": rng.integers(2, 6, count),
            "learning_rate": learning_rate,
            "dropout": rng.choice([0.0, 0.1, 0.2], count),
            "pixel_loss": rng.choice(["bce", "focal"], count),
            "batch_norm": rng.choice([True, False], count),
            "epochs": rng.choice([2, 6], count),
            # The score peaks at lr 1e-3 and ignores everything else (a little noise).
            "val_dice": 0.8
            - 0.3 * (np.log10(learning_rate) + 3) ** 2
            + rng.normal(0, 0.005, count),
        }
    )


def test_the_one_hyperparameter_that_drives_the_score_ranks_first():
    trials = trials_where_only_the_learning_rate_matters(60)
    weights = report.importances(trials, "val_dice", NAMES)
    assert weights.index[0] == "learning_rate"
    assert weights["learning_rate"] > 5 * weights.drop("learning_rate").abs().max()


def test_a_report_of_few_trials_carries_a_caveat_and_the_importance_plot(tmp_path):
    trials = trials_where_only_the_learning_rate_matters(8)
    path = report.write_report(trials, "val_dice", NAMES, tmp_path, judged(trials, tmp_path))
    text = path.read_text()
    assert "## Best trials" in text and "| trial_id | val_dice |" in text
    assert "Caveat: only 8 completed trials" in text
    assert (tmp_path / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_varied_means_no_importance_rather_than_a_made_up_one(tmp_path):
    trials = trials_where_only_the_learning_rate_matters(5)
    for name in [*NAMES, "epochs"]:
        trials[name] = trials[name].iloc[0]
    assert report.importances(trials, "val_dice", NAMES).empty
    assert (
        "no importance to report"
        in report.write_report(
            trials, "val_dice", NAMES, tmp_path, judged(trials, tmp_path)
        ).read_text()
    )


def judged(trials, project_dir):
    return evidence.judge_winner(trials, "val_dice", project_dir, None)
