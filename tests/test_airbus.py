"""Reading a dataset in the Kaggle layout (shipseg.data.airbus): the table, its errors, skipped images,
the image list of inference, and the real sample (skipped without it).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import csv_rows, union_mask
from shipseg.core.errors import DataError
from shipseg.data import airbus


def write_csv(dataset: Path, rows: pd.DataFrame) -> None:
    rows.to_csv(dataset / airbus.CSV_NAME, index=False)


def test_read_dataset_on_real_sample(airbus_sample):
    messages = []
    table = airbus.read_dataset(airbus_sample, log=messages.append)
    rows = csv_rows(airbus_sample)
    assert len(table) == rows.ImageId.nunique()
    assert not messages
    counts = rows[rows.EncodedPixels != ""].groupby("ImageId").size()
    np.testing.assert_array_equal(
        table.ship_count, [counts.get(image_id, 0) for image_id in table.ImageId]
    )
    assert all(Path(path).parent.name == "images" for path in table.path)


def test_the_dataset_table_has_one_row_per_image_with_its_ships_and_their_rles(
    synthetic_dataset, synthetic_table
):
    table = synthetic_table
    rows = csv_rows(synthetic_dataset)
    assert list(table.columns) == [
        "ImageId",
        "path",
        "ship_count",
        "rles",
        "ship_pixels",
        "EncodedPixels",
    ]
    assert table.ImageId.tolist() == sorted(rows.ImageId.unique())
    assert set(table.ImageId) == {p.name for p in (synthetic_dataset / "train_v2").iterdir()}
    assert 0 < (table.ship_count > 0).sum() < len(table)
    for row in table.itertuples():
        ships = rows[(rows.ImageId == row.ImageId) & (rows.EncodedPixels != "")]
        assert row.ship_count == len(ships)
        assert row.rles == tuple(ships.EncodedPixels)
        assert row.EncodedPixels == " ".join(ships.EncodedPixels)
        assert Path(row.path) == synthetic_dataset / "train_v2" / row.ImageId
        assert row.ship_pixels == union_mask(row.rles, (64, 64)).sum()
        if row.ship_count == 0:
            assert row.rles == () and row.EncodedPixels == "" and row.ship_pixels == 0
        else:
            assert row.ship_pixels > 0


def test_read_dataset_accepts_the_images_folder_name(dataset_copy):
    (dataset_copy / "train_v2").rename(dataset_copy / "images")
    table = airbus.read_dataset(dataset_copy, log=pytest.fail)
    assert len(table) == 40
    assert all(Path(p).parent == dataset_copy / "images" for p in table.path)


def test_read_dataset_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"{missing}: data directory does not exist")):
        airbus.read_dataset(missing)


def test_read_dataset_missing_image_folder(dataset_copy):
    shutil.rmtree(dataset_copy / "train_v2")
    with pytest.raises(DataError, match=re.escape(f"{dataset_copy}: no image folder")):
        airbus.read_dataset(dataset_copy)


def test_read_dataset_missing_csv(dataset_copy):
    csv = dataset_copy / airbus.CSV_NAME
    csv.unlink()
    with pytest.raises(DataError, match=re.escape(f"{csv}: ship mask CSV is missing")):
        airbus.read_dataset(dataset_copy)


@pytest.mark.parametrize(
    "content",
    ["ImageId,Pixels\na.jpg,\n", "id,EncodedPixels\na.jpg,\n", "ImageId,EncodedPixels,x\na,,\n"],
)
def test_read_dataset_wrong_csv_columns(dataset_copy, content):
    csv = dataset_copy / airbus.CSV_NAME
    csv.write_text(content)
    with pytest.raises(DataError, match=re.escape(f"{csv}: columns are")):
        airbus.read_dataset(dataset_copy)


def test_read_dataset_unreadable_csv(dataset_copy):
    csv = dataset_copy / airbus.CSV_NAME
    csv.write_text("")
    with pytest.raises(DataError, match=re.escape(f"{csv}: not a readable CSV")):
        airbus.read_dataset(dataset_copy)


@pytest.mark.parametrize(
    ("bad_rle", "reason"), [("5 0", "length 0"), ("1 2 3", "odd number"), ("7 x", "not an integer")]
)
def test_read_dataset_bad_rle_names_the_line(dataset_copy, bad_rle, reason):
    rows = csv_rows(dataset_copy)
    bad_index = 5
    rows.loc[bad_index, "EncodedPixels"] = bad_rle
    write_csv(dataset_copy, rows)
    image_id = rows.ImageId[bad_index]
    csv = dataset_copy / airbus.CSV_NAME
    # Line 1 is the header, so row 5 is on line 7.
    expected = re.escape(f"{csv}, line 7 ({image_id}): ") + f".*{reason}"
    with pytest.raises(DataError, match=expected):
        airbus.read_dataset(dataset_copy)


def test_read_dataset_skips_missing_and_broken_images(dataset_copy):
    rows = csv_rows(dataset_copy)
    ids = sorted(rows.ImageId.unique())
    train = dataset_copy / "train_v2"
    deleted, empty, truncated, not_image, bad_mask = ids[:5]
    (train / deleted).unlink()
    (train / empty).write_bytes(b"")
    data = (train / truncated).read_bytes()
    (train / truncated).write_bytes(data[: len(data) // 2])
    (train / not_image).write_text("ImageId,EncodedPixels\nthis is a CSV, not a JPEG\n")
    # A mask that parses but runs past the end of this 64 x 64 image.
    rows = pd.concat([rows, pd.DataFrame({"ImageId": [bad_mask], "EncodedPixels": ["4090 20"]})])
    rows = pd.concat([rows, pd.DataFrame({"ImageId": ["ghost.jpg"], "EncodedPixels": [""]})])
    write_csv(dataset_copy, rows)

    messages = []
    table = airbus.read_dataset(dataset_copy, log=messages.append)

    assert set(table.ImageId) == set(ids) - {deleted, empty, truncated, not_image, bad_mask}
    assert len(messages) == 2, messages
    missing_message = next(m for m in messages if "not on disk" in m)
    broken_message = next(m for m in messages if "broken" in m)
    assert str(train) in missing_message
    assert re.search(r"\b2 images listed in the CSV but not on disk", missing_message)
    assert deleted in missing_message and "ghost.jpg" in missing_message
    assert re.search(r"\b4 broken images", broken_message)
    assert f"{empty} (not a readable" in broken_message
    assert f"{not_image} (not a readable" in broken_message
    assert f"{truncated} (truncated JPEG" in broken_message
    assert f"{bad_mask} (mask does not fit the 64 x 64 image" in broken_message


def test_read_dataset_shortens_long_skip_lists(dataset_copy):
    ids = sorted(csv_rows(dataset_copy).ImageId.unique())
    for image_id in ids[:7]:
        (dataset_copy / "train_v2" / image_id).unlink()
    messages = []
    table = airbus.read_dataset(dataset_copy, log=messages.append)
    assert len(table) == len(ids) - 7
    (message,) = messages
    assert "7 images listed in the CSV but not on disk" in message
    assert all(image_id in message for image_id in ids[:5])
    assert ids[6] not in message and message.endswith("and 2 more")


def test_read_dataset_without_image_checks_only_skips_missing_files(dataset_copy):
    ids = sorted(csv_rows(dataset_copy).ImageId.unique())
    (dataset_copy / "train_v2" / ids[0]).unlink()
    (dataset_copy / "train_v2" / ids[1]).write_bytes(b"")
    messages = []
    table = airbus.read_dataset(dataset_copy, check_images=False, log=messages.append)
    assert ids[0] not in set(table.ImageId) and ids[1] in set(table.ImageId)
    assert len(messages) == 1 and ids[0] in messages[0]


def test_read_dataset_with_no_usable_image_is_an_error(dataset_copy):
    shutil.rmtree(dataset_copy / "train_v2")
    (dataset_copy / "train_v2").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{dataset_copy}: no usable image")):
        airbus.read_dataset(dataset_copy, log=lambda message: None)


def test_inspect_image_file_reads_size_and_accepts_png(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 9, 3), np.uint8)).save(png)
    assert airbus.inspect_image_file(png) == (None, (5, 9))
    gif = tmp_path / "a.gif"
    Image.fromarray(np.zeros((5, 9), np.uint8)).save(gif)
    problem, _ = airbus.inspect_image_file(gif)
    assert problem == "GIF is not a JPEG or PNG image"
    assert airbus.inspect_image_file(tmp_path / "none.jpg") == ("missing", None)


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ["b.jpg", "a.JPEG", "c.png", "notes.txt", "d.tif"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub.jpg").mkdir()
    return folder


def test_a_folder_lists_its_images_by_name_whatever_the_suffix_case(image_folder):
    assert airbus.list_images([image_folder]) == [
        image_folder / "a.JPEG",
        image_folder / "b.jpg",
        image_folder / "c.png",
    ]


def test_list_images_glob_file_and_duplicates(image_folder):
    found = airbus.list_images(
        [str(image_folder / "*.jpg"), image_folder / "notes.txt", image_folder]
    )
    # Globs give files only; a named file is kept whatever its suffix; duplicates go.
    assert found == [
        image_folder / "b.jpg",
        image_folder / "notes.txt",
        image_folder / "a.JPEG",
        image_folder / "c.png",
    ]


@pytest.mark.parametrize("pattern", ["missing.jpg", "missing_dir", "*.bmp", "empty"])
def test_list_images_matching_nothing_is_an_error(image_folder, pattern):
    (image_folder / "empty").mkdir()
    item = str(image_folder / pattern)
    with pytest.raises(DataError, match=re.escape(f"{item}: no image file matches")):
        airbus.list_images([image_folder, item])


def test_list_images_on_real_test_images(airbus_sample):
    found = airbus.list_images([airbus_sample / "test_images"])
    assert len(found) == 30 and all(p.suffix == ".jpg" for p in found)
