"""The train/val/test split (shipseg.data.splits): disjoint, stratified, seeded, saved and reloaded."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from shipseg.core.errors import DataError
from shipseg.data import splits


@pytest.fixture(scope="module")
def split_table() -> pd.DataFrame:
    """600 images with the Airbus share of empty images and some crowded ones."""
    rng = np.random.default_rng(0)
    counts = np.where(rng.random(600) < 0.78, 0, np.minimum(rng.geometric(0.45, 600), 15))
    return pd.DataFrame({"ImageId": [f"{i:09x}.jpg" for i in range(600)], "ship_count": counts})


def test_split_parts_are_disjoint_and_cover_every_image(split_table):
    split = splits.make_split(split_table, val_fraction=0.15, test_fraction=0.2, seed=1)
    assert list(split.columns) == ["ImageId", "split", "group"]
    assert split.ImageId.is_unique
    assert sorted(split.ImageId) == sorted(split_table.ImageId)
    assert split.ImageId.tolist() == sorted(split.ImageId)
    assert set(split.split) == {"train", "val", "test"}
    shares = split.split.value_counts(normalize=True)
    assert shares["val"] == pytest.approx(0.15, abs=0.02)
    assert shares["test"] == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_ship_count_group_is_cut_by_the_split_fractions(split_table, seed):
    split = splits.make_split(split_table, 0.15, 0.2, seed=seed).merge(split_table, on="ImageId")
    whole = (split.ship_count == 0).mean()
    for name, part in split.groupby("split"):
        assert (part.ship_count == 0).mean() == pytest.approx(whole, abs=0.01), name
    # Every ship-count group is cut by the fractions (up to rounding), not just on average.
    strata = split.ship_count.map(splits.ship_count_stratum)
    for stratum in ["0", "1", "2", "3-4", "5+"]:
        members = split[strata == stratum]
        assert len(members) >= 10, stratum
        for name, fraction in [("val", 0.15), ("test", 0.2)]:
            assert abs((members.split == name).sum() - fraction * len(members)) <= 1, stratum


def test_ship_counts_fall_into_five_strata():
    groups = [splits.ship_count_stratum(n) for n in range(8)]
    assert groups == ["0", "1", "2", "3-4", "3-4", "5+", "5+", "5+"]


def test_the_same_seed_gives_the_same_split_and_another_a_different_one(split_table):
    first = splits.make_split(split_table, seed=7)
    pd.testing.assert_frame_equal(first, splits.make_split(split_table, seed=7))
    other = splits.make_split(split_table, seed=8)
    assert not first.split.equals(other.split)


def test_split_rejects_bad_fractions(split_table):
    for val, test in [(-0.1, 0.1), (0.5, 0.5), (0.2, 1.0)]:
        with pytest.raises(ValueError, match="fractions"):
            splits.make_split(split_table, val, test)


def test_save_and_load_split_round_trip(split_table, tmp_path):
    split = splits.make_split(split_table, seed=3)
    path = tmp_path / "sub" / "split.csv"
    splits.save_split(split, path)
    loaded = splits.load_split(path)
    pd.testing.assert_frame_equal(loaded, split)
    for name in splits.SPLIT_NAMES:
        assert set(splits.select_split(split_table, loaded, name).ImageId) == set(
            split.ImageId[split.split == name]
        )
    assert [p.name for p in path.parent.iterdir()] == ["split.csv"]  # no temporary file left


def test_load_split_drops_images_the_dataset_no_longer_has(split_table, tmp_path):
    split = splits.make_split(split_table, seed=3)
    path = tmp_path / "split.csv"
    splits.save_split(split, path)
    smaller = split_table.iloc[:300]
    loaded = splits.load_split(path, smaller)
    assert set(loaded.ImageId) == set(smaller.ImageId)
    no_val = split_table[split_table.ImageId.isin(split.ImageId[split.split != "val"])]
    with pytest.raises(DataError, match="no val image"):
        splits.load_split(path, no_val)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "split file is missing"),
        ("ImageId,part\na.jpg,train\n", "not a split file"),
        ("ImageId,split\na.jpg,training\n", "not a split file"),
        ("", "split file"),
        ('ImageId,split\n"a.jpg,train\n', "split file"),
        (b"\xff\xfe\x00\x01garbage", "split file"),
        ("ImageId,split,group\na.jpg,train,first\n", "group column must hold whole numbers"),
    ],
)
def test_a_bad_split_file_is_a_data_error_naming_the_file_and_the_problem(
    tmp_path, content, message
):
    path = tmp_path / "split.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
        splits.load_split(path)


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


@pytest.mark.parametrize("folds", [1, 100])
def test_impossible_fold_counts_are_refused(synthetic_table, folds):
    with pytest.raises(ValueError, match="fold"):
        splits.make_folds(synthetic_table, folds)


def test_sample_images_keeps_the_share_of_ship_images(synthetic_table):
    ship_share = (synthetic_table.ship_count > 0).mean()
    sample = splits.sample_images(synthetic_table, 20, seed=1)
    assert len(sample) == 20 and sample.ImageId.is_unique
    assert (sample.ship_count > 0).mean() == pytest.approx(ship_share, abs=0.05)
    assert sample.equals(splits.sample_images(synthetic_table, 20, seed=1))
    assert len(splits.sample_images(synthetic_table, None)) == len(synthetic_table)
    with pytest.raises(ValueError, match="at least 1"):
        splits.sample_images(synthetic_table, 0)


def test_a_table_without_empty_images_is_still_stratified():
    table = pd.DataFrame(
        {
            "ImageId": [f"{i}.jpg" for i in range(400)],
            "ship_count": np.repeat([1, 2, 3, 6], 100),
        }
    )
    split = splits.make_split(table, seed=3).merge(table)
    for _, part in split.groupby("split"):
        shares = part.ship_count.map(splits.ship_count_stratum).value_counts(normalize=True)
        assert shares.to_numpy() == pytest.approx(0.25, abs=0.03)
