"""The synthetic dataset (shipseg.data.synthetic): the Kaggle layout, reproducible bytes, textured sea and
ships where their RLE says.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import label

from conftest import csv_rows, pil_image
from shipseg.core.errors import DataError
from shipseg.data import airbus, synthetic
from shipseg.data.rle import rle_decode


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_synthetic_dataset_has_the_kaggle_layout(synthetic_dataset):
    config = synthetic.SyntheticConfig(train_images=40, test_images=4, image_size=64, seed=3)
    assert {p.name for p in synthetic_dataset.iterdir()} == {
        "train_v2",
        "test_v2",
        airbus.CSV_NAME,
        "synthetic.json",
    }
    csv = synthetic_dataset / airbus.CSV_NAME
    lines = csv.read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    rows = csv_rows(synthetic_dataset)
    train = sorted(p.name for p in (synthetic_dataset / "train_v2").iterdir())
    test = sorted(p.name for p in (synthetic_dataset / "test_v2").iterdir())
    assert len(train) == config.train_images and len(test) == config.test_images
    assert sorted(rows.ImageId.unique()) == train
    assert not set(test) & set(rows.ImageId)
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", name) for name in train + test)
    for image_id, group in rows.groupby("ImageId"):
        empty = (group.EncodedPixels == "").sum()
        # One empty row for an image without ships, never an empty row beside ship rows.
        assert (empty, len(group)) == (1, 1) or empty == 0, image_id
    for name in train[:3] + test[:1]:
        folder = "train_v2" if name in train else "test_v2"
        with Image.open(synthetic_dataset / folder / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))


def test_synthetic_dataset_same_seed_same_bytes(tmp_path):
    config = synthetic.SyntheticConfig(train_images=8, test_images=2, image_size=32, seed=5)
    first = all_files(synthetic.generate_synthetic_dataset(tmp_path / "a", config))
    second = all_files(synthetic.generate_synthetic_dataset(tmp_path / "b", config))
    assert first == second
    other_config = synthetic.SyntheticConfig(train_images=8, test_images=2, image_size=32, seed=6)
    other = all_files(synthetic.generate_synthetic_dataset(tmp_path / "c", other_config))
    assert set(other) != set(first)
    assert other[airbus.CSV_NAME] != first[airbus.CSV_NAME]


def test_synthetic_dataset_refuses_to_overwrite_and_leaves_no_staging(tmp_path):
    config = synthetic.SyntheticConfig(train_images=2, test_images=0, image_size=32)
    out = synthetic.generate_synthetic_dataset(tmp_path / "data", config)
    before = all_files(out)
    with pytest.raises(FileExistsError):
        synthetic.generate_synthetic_dataset(out, config)
    assert all_files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("empty_fraction", [0.78, 0.3])
def test_synthetic_share_of_empty_images(tmp_path, empty_fraction):
    config = synthetic.SyntheticConfig(
        train_images=500, test_images=0, image_size=32, empty_fraction=empty_fraction, seed=1
    )
    table = airbus.read_dataset(synthetic.generate_synthetic_dataset(tmp_path / "d", config))
    assert len(table) == 500
    assert (table.ship_count == 0).mean() == pytest.approx(empty_fraction, abs=0.06)
    assert table.ship_count.max() <= config.max_ships


def test_synthetic_backgrounds_are_textured(synthetic_table):
    empty = synthetic_table[synthetic_table.ship_count == 0]
    assert len(empty) >= 10
    for path in empty.path:
        gray = pil_image(path).mean(axis=-1)
        assert gray.std() > 3, f"{path}: flat background (std {gray.std():.2f})"
        # Not only pixel noise: block means vary too (smooth blotches, swell).
        blocks = gray.reshape(8, 8, 8, 8).mean(axis=(1, 3))
        assert blocks.std() > 1.5, f"{path}: no large-scale texture"
    assert len({round(float(pil_image(p).mean()), 1) for p in empty.path}) > 5


def test_synthetic_ships_are_single_regions_where_the_rle_says(synthetic_table):
    sizes, contrasts = [], []
    for row in synthetic_table[synthetic_table.ship_count > 0].itertuples():
        gray = pil_image(row.path).mean(axis=-1)
        masks = [rle_decode(rle, gray.shape).astype(bool) for rle in row.rles]
        for mask in masks:
            assert label(mask, connectivity=2).max() == 1
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
            contrasts.append(abs(gray[mask].mean() - gray[ring].mean()))
            sizes.append(int(mask.sum()))
        # Ships of one image neither overlap nor touch.
        together = np.sum(masks, axis=0)
        assert together.max() == 1
        assert label(together > 0, connectivity=2).max() == len(masks)
    assert len(sizes) >= 15
    # The RLE sits on the painted ships (bright or dark against the sea), not beside them.
    assert np.mean(np.array(contrasts) > 15) >= 0.9
    assert len(set(sizes)) >= 5 and max(sizes) >= 3 * min(sizes)


def test_the_synthetic_dataset_is_reused_regrown_and_never_written_over_a_foreign_folder(tmp_path):
    small = synthetic.SyntheticConfig(train_images=3, test_images=0, image_size=32, seed=0)
    out = synthetic.ensure_synthetic_dataset(tmp_path / "syn", small)
    csv = out / airbus.CSV_NAME
    stamp = csv.stat().st_mtime_ns
    assert synthetic.ensure_synthetic_dataset(out, small) == out
    assert csv.stat().st_mtime_ns == stamp  # reused, not regenerated
    bigger = dataclasses.replace(small, train_images=5)
    synthetic.ensure_synthetic_dataset(out, bigger)
    assert len(list((out / "train_v2").iterdir())) == 5
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        synthetic.ensure_synthetic_dataset(foreign, small)
    assert (foreign / "keep.txt").read_text() == "precious"
