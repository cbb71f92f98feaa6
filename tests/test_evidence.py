"""How sure a search's winner is (shipseg/search/evidence.py), on constructed trials."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shipseg.scoring import metrics
from shipseg.search import evidence


def scores(values, column="f2_tuned") -> pd.DataFrame:
    return pd.DataFrame({"ImageId": [f"{i:03d}.jpg" for i in range(len(values))], column: values})


def test_a_winner_better_on_every_image_has_a_margin_whose_interval_excludes_zero():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 100)
    margin = evidence.paired_margin(scores(base + 0.1), scores(base), "f2_tuned")
    assert margin["margin"] == pytest.approx(0.1)
    assert margin["interval"] == pytest.approx([0.1, 0.1]) and margin["distinct"]
    assert margin["images"] == 100


def test_a_winner_ahead_by_noise_alone_cannot_be_told_apart():
    rng = np.random.default_rng(1)
    first, second = rng.uniform(0, 1, 108), rng.uniform(0, 1, 108)
    margin = evidence.paired_margin(scores(first), scores(second), "f2_tuned")
    low, high = margin["interval"]
    assert low < 0 < high and not margin["distinct"]


def test_the_margin_pairs_images_by_name_whatever_their_order():
    first = scores([1.0, 0.0, 0.5])
    second = scores([0.5, 0.0, 1.0]).iloc[::-1]  # the same images, listed backwards
    margin = evidence.paired_margin(first, second, "f2_tuned")
    assert margin["margin"] == pytest.approx(0.0) and margin["images"] == 3


def chains() -> pd.DataFrame:
    """Hyperband-like trials: four first-rung configurations, three promoted once or twice."""
    rows = [
        ("0000", "", 0.30), ("0001", "", 0.40), ("0002", "", 0.50), ("0003", "", 0.10),
        ("0004", "0000", 0.60), ("0005", "0001", 0.70), ("0006", "0002", 0.80),
        ("0007", "0006", 0.90),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["trial_id", "continued_from", "val_f2_tuned"])
    return table.assign(status="COMPLETED")


def test_rank_agreement_follows_each_promoted_configuration_to_its_last_trial():
    agreement = evidence.rank_agreement(chains(), "val_f2_tuned")
    assert agreement == {"spearman": pytest.approx(1.0), "configurations": 3}
    reversed_finals = chains()
    reversed_finals.loc[reversed_finals.trial_id == "0007", "val_f2_tuned"] = 0.05
    flipped = evidence.rank_agreement(reversed_finals, "val_f2_tuned")
    assert flipped["spearman"] == pytest.approx(-0.5)


def test_rank_agreement_needs_three_promoted_configurations():
    assert evidence.rank_agreement(chains().iloc[:5], "val_f2_tuned") is None


def test_the_verdict_names_the_start_and_runner_up_and_says_when_they_are_indistinct(tmp_path):
    trials = pd.DataFrame(
        {
            "trial_id": ["0002", "0001", "0000"],
            "status": "COMPLETED",
            "val_f2_tuned": [0.9, 0.85, 0.8],
            "levels": [4, 5, 3],
            "learning_rate": [1e-3, 1e-3, 3e-4],
            "continued_from": "",
        }
    )
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 50)
    for trial_id, shift in (("0002", 0.2), ("0000", 0.0), ("0001", 0.2)):
        folder = tmp_path / "tuner" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        scores(np.clip(base + shift + rng.normal(0, 0.05, 50), 0, 2)).to_csv(
            folder / evidence.IMAGE_SCORES, index=False
        )
    start = {"levels": 3, "learning_rate": 3e-4}
    verdict = evidence.judge_winner(trials, "val_f2_tuned", tmp_path, start)
    assert (verdict["winner"], verdict["start"], verdict["runner_up"]) == ("0002", "0000", "0001")
    assert verdict["over_start"]["margin"] == pytest.approx(0.2, abs=0.01)
    assert verdict["over_start"]["distinct"]
    lines = "\n".join(evidence.verdict_lines(verdict))
    assert "Over the start (the first, trusted configuration), trial 0000: +0.19" in lines
    assert "Over the runner-up, trial 0001: " in lines
    assert "the two cannot be told apart on these images" in lines
    assert "not measurable" in lines


def test_a_winner_that_is_the_start_is_said_to_be_it(tmp_path):
    trials = pd.DataFrame(
        {"trial_id": ["0000"], "status": "COMPLETED", "val_f2": [0.8], "levels": [4]}
    ).assign(continued_from="")
    verdict = evidence.judge_winner(trials, "val_f2", tmp_path, {"levels": 4})
    assert verdict["start"] == verdict["winner"] == "0000"
    assert "The winner is the start" in "\n".join(evidence.verdict_lines(verdict))


def test_each_images_gated_f2_averages_to_the_best_gates_f2():
    rng = np.random.default_rng(3)
    scores_, opened = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    closed = (rng.uniform(0, 1, 40) > 0.3).astype(float)
    threshold, best = metrics.best_gate(scores_, opened, closed)
    assert metrics.gated_f2(scores_, opened, closed, threshold).mean() == pytest.approx(best)


def test_a_search_without_trials_has_no_winner_to_judge(tmp_path):
    verdict = evidence.judge_winner(pd.DataFrame(), "val_dice", tmp_path, None)
    assert verdict["winner"] is None
    assert evidence.verdict_lines(verdict) == ["No completed trial: no winner to judge."]


def test_a_project_without_a_recorded_start_still_names_its_runner_up(tmp_path):
    trials = pd.DataFrame(
        {"trial_id": ["0001", "0000"], "status": "COMPLETED", "val_f2": [0.8, 0.7]}
    ).assign(levels=[4, 3], continued_from="")
    verdict = evidence.judge_winner(trials, "val_f2", tmp_path, None)
    assert (verdict["winner"], verdict["start"], verdict["runner_up"]) == ("0001", None, "0000")
    assert verdict["chosen"] == "0001" and "no start configuration" in verdict["chosen_because"]


def test_without_per_image_scores_the_best_score_stands_and_says_why(tmp_path):
    verdict = evidence.judge_winner(two_trials([0.9, 0.7]), "val_f2_tuned", tmp_path, {"levels": 4})
    assert verdict["start"] == "0000" and verdict["over_start"] is None
    assert verdict["chosen"] == "0001" and "no per-image scores" in verdict["chosen_because"]


def write_scores(project_dir, shifts: dict[str, float], seed: int = 4) -> None:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, 108)
    for trial_id, shift in shifts.items():
        folder = project_dir / "tuner" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        noisy = base + shift + rng.normal(0, 0.15, 108)
        scores(noisy).to_csv(folder / evidence.IMAGE_SCORES, index=False)


def two_trials(scores_: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"trial_id": ["0001", "0000"], "status": "COMPLETED", "val_f2_tuned": scores_}
    ).assign(levels=[5, 4], continued_from="")


def test_a_winner_within_noise_of_the_start_leaves_the_start_to_be_retrained(tmp_path):
    write_scores(tmp_path, {"0001": 0.01, "0000": 0.0})
    verdict = evidence.judge_winner(
        two_trials([0.81, 0.80]), "val_f2_tuned", tmp_path, {"levels": 4}
    )
    assert verdict["winner"] == "0001" and not verdict["over_start"]["distinct"]
    assert verdict["chosen"] == "0000"
    assert "`train.py --best` retrains trial 0000: the start" in "\n".join(
        evidence.verdict_lines(verdict)
    )


def test_a_winner_clearly_above_the_start_is_the_one_retrained(tmp_path):
    write_scores(tmp_path, {"0001": 0.2, "0000": 0.0})
    verdict = evidence.judge_winner(two_trials([0.9, 0.7]), "val_f2_tuned", tmp_path, {"levels": 4})
    assert verdict["over_start"]["distinct"] and verdict["chosen"] == "0001"
    assert "beats the start" in verdict["chosen_because"]
