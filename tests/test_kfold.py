"""K-fold bookkeeping (shipseg.data.kfold): which images each fold uses, and the summary."""

import json

import numpy as np
import pandas as pd
import pytest

from shipseg.data import kfold, splits


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
    summary = kfold.summarise_folds(folds, count=2)
    assert summary["gain"]["mean"] == pytest.approx(0.0)
    assert summary["gain"]["std"] == pytest.approx(np.std([0.05, -0.05], ddof=1))
    assert summary["folds_above_baseline"] == 1
    assert summary["complete"] and summary["folds_finished"] == 2


def test_a_summary_of_some_folds_says_how_many_of_all_it_covers_and_names_the_rest(capsys):
    folds = pd.DataFrame(
        {"fold": [0, 2], "test_images": [10, 10], "f2": [0.8, 0.7], "baseline": [0.75, 0.75]}
    )
    folds["gain"], folds["dice_ship_images"] = folds.f2 - folds.baseline, 0.5
    folds["gain_interval"] = [[0.0, 0.1], [-0.1, 0.0]]
    summary = kfold.summarise_folds(folds, count=5)
    assert not summary["complete"] and summary["folds_total"] == 5
    kfold.print_folds(summary)
    printed = capsys.readouterr().out
    assert "2 of 5 folds finished" in printed and "--only-folds 1 3 4" in printed


def write_fold(folder, config: dict, status: str = "complete") -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, "status": status}))
    (folder / "metrics.json").write_text(json.dumps({"test": {"f2": 0.8}}))


# What makes a fold's result: any of these differing, the fold is trained again.
TRAINED_WITH = (
    "hyperparameters input data_dir split_file monitor epochs images_per_epoch patience "
    "encoder_weights flip_tta seed trained_on folds fold fold_images"
).split()
FOLD_CONFIG = {key: f"{key} as trained" for key in TRAINED_WITH}


def test_a_fold_that_finished_with_the_same_configuration_is_kept(tmp_path):
    write_fold(tmp_path / "fold_1", {**FOLD_CONFIG, "command": "train.py --folds 5"})
    again = {**FOLD_CONFIG, "command": "train.py --folds 5 --only-folds 1", "time_budget": "1h"}
    assert kfold.finished_fold(tmp_path / "fold_1", again) == {"test": {"f2": 0.8}}


@pytest.mark.parametrize("key", TRAINED_WITH)
def test_a_fold_trained_otherwise_is_trained_again(tmp_path, key):
    write_fold(tmp_path / "fold_1", FOLD_CONFIG)
    assert kfold.finished_fold(tmp_path / "fold_1", {**FOLD_CONFIG, key: "otherwise"}) is None


def test_a_fold_still_training_or_absent_is_trained(tmp_path):
    write_fold(tmp_path / "fold_1", FOLD_CONFIG, status="training")
    assert kfold.finished_fold(tmp_path / "fold_1", FOLD_CONFIG) is None
    assert kfold.finished_fold(tmp_path / "fold_2", FOLD_CONFIG) is None


def test_a_folds_images_digest_changes_when_any_image_changes_role(synthetic_table):
    folds = splits.make_folds(synthetic_table, 3, seed=0)
    tables = kfold.fold_tables(synthetic_table, folds, 0)
    assert kfold.fold_images(tables) == kfold.fold_images(
        kfold.fold_tables(synthetic_table, folds, 0)
    )
    moved = {**tables, "val": tables["val"].iloc[1:], "test": tables["test"]}
    moved["train"] = pd.concat([tables["train"], tables["val"].iloc[:1]])
    assert kfold.fold_images(moved) != kfold.fold_images(tables)
    assert kfold.fold_images(kfold.fold_tables(synthetic_table, folds, 1)) != kfold.fold_images(
        tables
    )
