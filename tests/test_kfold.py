"""K-fold bookkeeping (shipseg.kfold): which images each fold uses, and the summary."""

import numpy as np
import pandas as pd
import pytest

from shipseg import kfold, splits


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


def test_fold_summary_reports_mean_spread_and_folds_above_the_baseline():
    folds = pd.DataFrame(
        {"f2": [0.8, 0.7], "baseline": [0.75, 0.75], "dice_ship_images": [0.6, 0.5]}
    )
    folds["gain"] = folds.f2 - folds.baseline
    summary = kfold.summarise_folds(folds)
    assert summary["gain"]["mean"] == pytest.approx(0.0)
    assert summary["gain"]["std"] == pytest.approx(np.std([0.05, -0.05], ddof=1))
    assert summary["folds_above_baseline"] == 1
