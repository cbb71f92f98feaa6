"""The exact image-level threshold, bootstrap intervals and K-fold assignment."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import evaluation
from shipseg import kfold, splits

probabilities = st.floats(0, 1, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(probabilities, probabilities, st.booleans()), min_size=1, max_size=30))
def test_best_gate_matches_every_threshold_tried_by_brute_force(images):
    scores = np.array([score for score, _, _ in images])
    f2_open = np.array([f2 for _, f2, _ in images])
    f2_closed = np.array([1.0 if empty else 0.0 for _, _, empty in images])
    threshold, best = evaluation.best_gate(scores, f2_open, f2_closed)

    def mean_f2(t):
        return np.where(scores >= t, f2_open, f2_closed).mean()

    candidates = [*np.unique(scores), scores.max() + 1]
    assert best == pytest.approx(max(mean_f2(t) for t in candidates))
    # The returned threshold really scores what it claims.
    assert mean_f2(threshold) == pytest.approx(best)


def test_best_gate_keeps_the_stricter_threshold_on_a_tie():
    # Opening the only image gains nothing: the gate stays shut.
    threshold, best = evaluation.best_gate([0.9], [1.0], [1.0])
    assert threshold > 0.9 and best == 1.0


def test_best_gate_opens_only_the_images_whose_ships_pay():
    scores = [0.95, 0.9, 0.3, 0.2]
    f2_open = [0.8, 0.6, 0.0, 0.0]  # two ship images found, two empty images with false ships
    f2_closed = [0.0, 0.0, 1.0, 1.0]
    threshold, best = evaluation.best_gate(scores, f2_open, f2_closed)
    assert 0.3 < threshold <= 0.9
    assert best == pytest.approx((0.8 + 0.6 + 1 + 1) / 4)


def test_bootstrap_intervals_contain_the_estimates_and_narrow_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for images in (50, 800):
        baseline = (rng.uniform(size=images) < 0.75).astype(float)
        f2 = np.where(baseline == 1, (rng.uniform(size=images) < 0.95), rng.uniform(size=images))
        intervals = evaluation.bootstrap_intervals(f2, baseline, resamples=2000)
        for name, values in (
            ("f2", f2),
            ("f2_no_ship_baseline", baseline),
            ("gain", f2 - baseline),
        ):
            low, high = intervals[name]
            assert low <= values.mean() <= high, name
        widths.append(intervals["gain"][1] - intervals["gain"][0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_of_a_model_equal_to_the_baseline_has_a_zero_gain_interval():
    baseline = np.array([1.0, 0.0, 1.0, 1.0])
    intervals = evaluation.bootstrap_intervals(baseline, baseline)
    assert intervals["gain"] == [0.0, 0.0]
    assert intervals == evaluation.bootstrap_intervals(baseline, baseline)


def test_folds_cover_every_image_once_and_keep_the_share_of_empty_images(synthetic_table):
    folds = splits.make_folds(synthetic_table, 4, seed=1)
    assert sorted(folds.index) == sorted(synthetic_table.ImageId)
    assert set(folds) == {0, 1, 2, 3}
    counts = folds.value_counts()
    assert counts.max() - counts.min() <= 1
    empty = synthetic_table.set_index("ImageId").ship_count == 0
    for fold in range(4):
        share = empty[folds.index[folds == fold]].mean()
        assert share == pytest.approx(empty.mean(), abs=0.15)
    assert folds.equals(splits.make_folds(synthetic_table, 4, seed=1))
    assert not folds.equals(splits.make_folds(synthetic_table, 4, seed=2))


def test_fold_tables_never_share_an_image(synthetic_table):
    folds = splits.make_folds(synthetic_table, 3, seed=0)
    tested = []
    for fold in range(3):
        tables = kfold.fold_tables(synthetic_table, folds, fold)
        ids = [set(tables[name].ImageId) for name in ("train", "val", "test")]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert set().union(*ids) == set(synthetic_table.ImageId)
        tested += list(tables["test"].ImageId)
    assert sorted(tested) == sorted(synthetic_table.ImageId)


@pytest.mark.parametrize("folds", [1, 100])
def test_impossible_fold_counts_are_refused(synthetic_table, folds):
    with pytest.raises(ValueError, match="fold"):
        splits.make_folds(synthetic_table, folds)


def test_fold_summary_reports_mean_spread_and_folds_above_the_baseline():
    folds = pd.DataFrame(
        {"f2": [0.8, 0.7], "baseline": [0.75, 0.75], "dice_ship_images": [0.6, 0.5]}
    )
    folds["gain"] = folds.f2 - folds.baseline
    summary = kfold.summarise_folds(folds)
    assert summary["gain"]["mean"] == pytest.approx(0.0)
    assert summary["gain"]["std"] == pytest.approx(np.std([0.05, -0.05], ddof=1))
    assert summary["folds_above_baseline"] == 1
