"""Tests of pipeline.py: RLE, reading the Kaggle layout, the split, tf.data input, synthetic data.

Everything runs on tiny synthetic images (64 x 64); the tests that use the ``airbus_sample``
fixture also check the decoder and reader against the real Airbus sample, and skip when it is not
there.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage
from skimage.measure import label

import pipeline
from shipseg import airbus, splits, synthetic
from shipseg.airbus import DataError
from shipseg.rle import parse_rle, rle_decode, rle_encode, rle_pixel_count, ships_to_label_image

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def reference_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The Kaggle definition, pixel by pixel: pixel k (1-based) is row (k-1) % H, col (k-1) // H."""
    height, _ = shape
    mask = np.zeros(shape, dtype=np.uint8)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2], strict=True):
        for k in range(start, start + length):
            mask[(k - 1) % height, (k - 1) // height] = 1
    return mask


def union_mask(rles, shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for rle in rles:
        mask |= rle_decode(rle, shape)
    return mask


def take_batch(dataset, n: int):
    """The first ``n`` elements of an unbatched training stream as numpy arrays."""
    images, masks = next(iter(dataset.batch(n).take(1)))
    return images.numpy(), masks.numpy()


def has_ship(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(len(masks), -1).max(axis=1) > 0


def tf_image(path) -> np.ndarray:
    """The image exactly as the tf.data input decodes it."""
    return pipeline.decode_image(str(path)).numpy()


def pil_image(path) -> np.ndarray:
    """The image as an independent decoder (Pillow) sees it."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def csv_rows(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset / airbus.CSV_NAME, dtype=str, keep_default_na=False)


def write_csv(dataset: Path, rows: pd.DataFrame) -> None:
    rows.to_csv(dataset / airbus.CSV_NAME, index=False)


def dihedral(array: np.ndarray):
    """The 8 flips/quarter turns of an (H, W, C) array, as ((flip, turns), transformed array)."""
    for flip in (False, True):
        flipped = array[:, ::-1] if flip else array
        for turns in range(4):
            yield (flip, turns), np.rot90(flipped, turns)


def locate(crop: np.ndarray, sources: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """All (source index, top, left) where ``crop`` is an exact window of a source image."""
    size = crop.shape[0]
    found = []
    for index, source in enumerate(sources):
        candidates = np.argwhere(
            (source[: 1 - size or None, : 1 - size or None] == crop[0, 0]).all(-1)
        )
        for top, left in candidates:
            if np.array_equal(source[top : top + size, left : left + size], crop):
                found.append((index, int(top), int(left)))
    return found


# ---------------------------------------------------------------------------------------------
# 1. Run-length encoding
# ---------------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))


@st.composite
def binary_masks(draw):
    shape = draw(shapes)
    return draw(arrays(np.uint8, shape, elements=st.integers(0, 1)))


@st.composite
def valid_rles(draw):
    """A random valid RLE (sorted, non-overlapping runs, possibly touching) and its shape."""
    height, width = draw(shapes)
    n = height * width
    cuts = sorted(draw(st.sets(st.integers(0, n), max_size=12)))
    runs = []
    for begin, end in zip(cuts[0::2], cuts[1::2], strict=False):
        if end > begin:
            runs += [begin + 1, end - begin]
    return " ".join(map(str, runs)), (height, width)


@settings(max_examples=200, deadline=None)
@given(binary_masks())
def test_rle_round_trip_on_random_masks(mask):
    rle = rle_encode(mask)
    decoded = rle_decode(rle, mask.shape)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)
    assert rle_pixel_count(rle) == mask.sum()
    # The encoder writes what the Kaggle definition means, not just what our decoder undoes.
    np.testing.assert_array_equal(reference_decode(rle, mask.shape), mask)


@settings(max_examples=200, deadline=None)
@given(valid_rles())
def test_rle_decode_matches_the_kaggle_definition(case):
    rle, shape = case
    np.testing.assert_array_equal(rle_decode(rle, shape), reference_decode(rle, shape))


def test_rle_encode_treats_every_nonzero_value_as_object_and_gives_canonical_runs():
    mask = np.zeros((4, 5), dtype=np.int32)
    mask[1:3, 0] = 255
    mask[3, 0] = -1
    mask[0, 1] = 7  # continues the run of column 0 (column-major order)
    assert rle_encode(mask) == "2 4"
    assert rle_encode(mask.astype(bool)) == "2 4"
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 1)))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (768, 768)])
def test_empty_mask_encodes_to_empty_string(shape):
    assert rle_encode(np.zeros(shape, dtype=np.uint8)) == ""


@pytest.mark.parametrize("empty", ["", "   ", float("nan"), np.nan, None])
def test_empty_rle_decodes_to_zeros(empty):
    mask = rle_decode(empty, (5, 3))
    assert mask.shape == (5, 3)
    assert mask.dtype == np.uint8
    assert not mask.any()
    assert rle_pixel_count(empty) == 0


def test_rle_is_column_major_and_one_based():
    mask = rle_decode("1 3", (4, 5))
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[0:3, 0] = 1  # rows 0..2 of column 0, not a row
    np.testing.assert_array_equal(mask, expected)

    # Pixel 5 of a 4-row image is the top of column 1; a run wraps into the next column.
    mask = rle_decode("5 1 8 2", (4, 5))
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(0, 1), (0, 2), (3, 1)]

    single = np.zeros((4, 5), dtype=np.uint8)
    single[2, 3] = 1  # column 3 starts after 3 * 4 pixels: 12 + row 2 + 1 = 15
    assert rle_encode(single) == "15 1"
    last = np.zeros((4, 5), dtype=np.uint8)
    last[3, 4] = 1
    assert rle_encode(last) == "20 1"


def test_touching_runs_are_valid():
    assert rle_decode("1 2 3 2", (4, 5)).sum() == 4


def test_ships_to_label_image():
    shape = (6, 6)
    labels = ships_to_label_image(["1 2", "13 3", "36 1"], shape)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels[0:2, 0], [1, 1])
    np.testing.assert_array_equal(labels[0:3, 2], [2, 2, 2])
    assert labels[5, 5] == 3
    assert (labels > 0).sum() == 6
    assert not ships_to_label_image([], shape).any()


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", r"odd number of values \(3\)"),
        ("1 x", r"not an integer: 'x'"),
        ("1 2.5", r"not an integer: '2\.5'"),
        ("1e3 2", r"not an integer: '1e3'"),
        ("--5 2", r"not an integer: '--5'"),
        ("1_0 2", r"not an integer: '1_0'"),
        ("\u00b2 1", r"not an integer"),
        ("99999999999999999999999 1", r"too large"),
        ("1 0", r"run of length 0"),
        ("1 -2", r"run of length -2"),
        ("0 2", r"start 0 is below 1"),
        ("-3 2", r"start -3 is below 1"),
        ("19 3", r"run 19 3 ends past the image \(20 pixels\)"),
        ("21 1", r"ends past the image"),
        ("10 2 1 2", r"unsorted or overlap: run starting at 1"),
        ("1 5 3 2", r"unsorted or overlap: run starting at 3 begins before .* ends at 5"),
        ("1 2 2 1", r"unsorted or overlap"),
    ],
)
def test_malformed_rle_raises_value_error(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (4, 5))


def test_non_string_rle_raises_value_error():
    with pytest.raises(ValueError, match="must be a string, got int"):
        parse_rle(5, 20)


rle_tokens = st.one_of(
    st.integers(-3, 30).map(str),
    st.integers(-(10**25), 10**25).map(str),
    st.sampled_from(
        ["--5", "+3", "1_0", "0x1f", "1e3", "2.0", "\u00b2", "\u0663", "\uff11", "nan"]
    ),
    st.text(min_size=1, max_size=4).filter(lambda s: s.split() == [s]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(rle_tokens, max_size=6), shapes)
def test_parse_rle_accepts_only_valid_runs_and_fails_only_with_value_error(tokens, shape):
    """Any input either decodes to a mask the Kaggle definition agrees with, or is a ValueError.

    read_dataset turns ValueError into a DataError naming the CSV line; any other exception
    would crash the user's run with no hint of where the bad row is.
    """
    rle = " ".join(tokens)
    try:
        mask = rle_decode(rle, shape)
    except ValueError as error:
        assert str(error)
        return
    np.testing.assert_array_equal(mask, reference_decode(rle, shape))
    assert all(token.isascii() and token.isdigit() for token in tokens)


# --- against the real sample ------------------------------------------------------------------


def sample_ship_rows(airbus_sample: Path) -> pd.DataFrame:
    rows = csv_rows(airbus_sample)
    return rows[rows.EncodedPixels != ""].reset_index(drop=True)


def test_decoder_pixel_counts_on_real_rows(airbus_sample):
    ships = sample_ship_rows(airbus_sample)
    assert len(ships) > 30
    for rle in ships.EncodedPixels[:: max(1, len(ships) // 40)]:
        lengths = [int(v) for v in rle.split()[1::2]]
        mask = rle_decode(rle, (768, 768))
        assert mask.sum() == sum(lengths) == rle_pixel_count(rle)
        # Real Kaggle strings come back character for character.
        assert rle_encode(mask) == " ".join(rle.split())


def test_known_real_rows(airbus_sample):
    rows = csv_rows(airbus_sample)
    ship = rows[rows.ImageId == "0002756f7.jpg"].EncodedPixels.tolist()
    assert len(ship) == 2
    assert rle_decode(ship[0]).sum() == 189
    assert rle_decode(ship[1]).sum() == 219
    # "255784 2": pixel 255784 is row 255783 % 768 = 39, column 255783 // 768 = 333.
    mask = rle_decode(ship[0])
    assert mask[39, 333] == mask[40, 333] == 1
    assert mask[38, 333] == mask[41, 333] == 0


def test_decoder_orientation_on_real_ships(airbus_sample):
    """Ships are bright on a dark sea: decoded masks lie on brighter pixels than transposed ones."""
    ships = sample_ship_rows(airbus_sample).drop_duplicates("ImageId")
    ships = ships.sort_values("ImageId").head(30)
    assert len(ships) == 30
    brighter = 0
    for image_id, rle in zip(ships.ImageId, ships.EncodedPixels, strict=True):
        gray = pil_image(airbus_sample / "images" / image_id).mean(axis=-1)
        mask = rle_decode(rle, gray.shape).astype(bool)
        brighter += gray[mask].mean() > gray[mask.T].mean() + 10
    # The data gives 25 of 30; a transposed (row-major) decoder gives 3.
    assert brighter >= 20, f"only {brighter} of 30 ships are brighter under the decoded mask"


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


# ---------------------------------------------------------------------------------------------
# 2. Reading a dataset directory
# ---------------------------------------------------------------------------------------------


def test_read_dataset_table(synthetic_dataset, synthetic_table):
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


# ---------------------------------------------------------------------------------------------
# 3. The split
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_table() -> pd.DataFrame:
    """600 images with the Airbus share of empty images and some crowded ones."""
    rng = np.random.default_rng(0)
    counts = np.where(rng.random(600) < 0.78, 0, np.minimum(rng.geometric(0.45, 600), 15))
    return pd.DataFrame({"ImageId": [f"{i:09x}.jpg" for i in range(600)], "ship_count": counts})


def test_split_parts_are_disjoint_and_cover_every_image(split_table):
    split = splits.make_split(split_table, val_fraction=0.15, test_fraction=0.2, seed=1)
    assert list(split.columns) == ["ImageId", "split"]
    assert split.ImageId.is_unique
    assert sorted(split.ImageId) == sorted(split_table.ImageId)
    assert split.ImageId.tolist() == sorted(split.ImageId)
    assert set(split.split) == {"train", "val", "test"}
    shares = split.split.value_counts(normalize=True)
    assert shares["val"] == pytest.approx(0.15, abs=0.02)
    assert shares["test"] == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_stratified(split_table, seed):
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


def test_ship_count_stratum():
    groups = [splits.ship_count_stratum(n) for n in range(8)]
    assert groups == ["0", "1", "2", "3-4", "3-4", "5+", "5+", "5+"]


def test_split_seed(split_table):
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
    ],
)
def test_load_split_errors(tmp_path, content, message):
    path = tmp_path / "split.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
        splits.load_split(path)


# ---------------------------------------------------------------------------------------------
# 4. tf.data input
# ---------------------------------------------------------------------------------------------


def crop_config(**changes) -> pipeline.InputConfig:
    settings_ = dict(mode="crop", size=32, ship_crop_probability=1.0, empty_image_fraction=0.0)
    return pipeline.InputConfig(**{**settings_, **changes})


def test_input_config_validation():
    with pytest.raises(ValueError, match="'crop' or 'resize'"):
        pipeline.InputConfig(mode="tile")
    with pytest.raises(ValueError, match="at least 8"):
        pipeline.InputConfig(size=4)
    with pytest.raises(ValueError, match="ship_crop_probability"):
        pipeline.InputConfig(ship_crop_probability=1.5)
    with pytest.raises(ValueError, match="empty_image_fraction"):
        pipeline.InputConfig(empty_image_fraction=-0.1)
    assert pipeline.InputConfig(mode="crop", size=256).scale(768) == 1.0
    assert pipeline.InputConfig(mode="resize", size=256).scale(768) == pytest.approx(1 / 3)


def test_training_batches_shapes_and_values(synthetic_table):
    config = crop_config(ship_crop_probability=0.9, empty_image_fraction=0.3)
    dataset = pipeline.training_dataset(synthetic_table, config, seed=0).batch(8)
    for images, masks in dataset.take(3):
        assert images.shape == (8, 32, 32, 3) and images.dtype.name == "float32"
        assert masks.shape == (8, 32, 32, 1) and masks.dtype.name == "float32"
        images, masks = images.numpy(), masks.numpy()
        assert images.min() >= 0 and images.max() <= 255 and images.max() > 1
        assert set(np.unique(masks)) <= {0.0, 1.0}


def test_every_crop_contains_a_ship_when_asked(synthetic_table):
    _, masks = take_batch(pipeline.training_dataset(synthetic_table, crop_config(), seed=1), 64)
    assert has_ship(masks).all()


def test_ship_crop_probability_is_honoured(synthetic_table):
    def ship_share(probability):
        config = crop_config(ship_crop_probability=probability)
        _, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=2), 300)
        return has_ship(masks).mean()

    by_chance, half = ship_share(0.0), ship_share(0.5)
    assert by_chance < 0.8  # random 32 px crops of 64 px images often miss the small ships
    assert 0.5 < half < 1.0
    assert half == pytest.approx(0.5 + 0.5 * by_chance, abs=0.08)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_empty_image_fraction_is_honoured(synthetic_table, fraction):
    config = crop_config(empty_image_fraction=fraction)
    _, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=3), 300)
    # Crops of ship images always contain a ship here, so empty masks come from empty images.
    assert (~has_ship(masks)).mean() == pytest.approx(fraction, abs=0.07)


def test_training_stream_with_one_kind_of_image(synthetic_table):
    only_ships = synthetic_table[synthetic_table.ship_count > 0]
    config = crop_config(empty_image_fraction=0.5)
    _, masks = take_batch(pipeline.training_dataset(only_ships, config, seed=0), 40)
    assert has_ship(masks).all()
    only_empty = synthetic_table[synthetic_table.ship_count == 0]
    _, masks = take_batch(pipeline.training_dataset(only_empty, crop_config(), seed=0), 40)
    assert not masks.any()
    with pytest.raises(ValueError, match="empty"):
        pipeline.training_dataset(synthetic_table.iloc[:0], crop_config())


def test_training_stream_is_reproducible(synthetic_table):
    config = crop_config(ship_crop_probability=0.7, empty_image_fraction=0.3, augment=True)

    def batches(seed):
        dataset = pipeline.training_dataset(synthetic_table, config, seed=seed).batch(16)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(3)]

    first, again, other = batches(11), batches(11), batches(12)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other, strict=True))
    # Beside a busy network, tf.data's autotuner can settle on a pace that idles a core.
    batched = pipeline.training_dataset(synthetic_table, config, seed=11).batch(16).prefetch(2)
    assert not batched.options().autotune.enabled


def test_resize_mode(synthetic_table):
    config = pipeline.InputConfig(mode="resize", size=48, augment=True)
    images, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=0), 8)
    assert images.shape == (8, 48, 48, 3) and masks.shape == (8, 48, 48, 1)
    assert set(np.unique(masks)) <= {0.0, 1.0}


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    height, width = array.shape[:2]
    return array.reshape(height // factor, factor, width // factor, factor, -1).mean(axis=(1, 3))


@pytest.mark.parametrize("size", [64, 32, 16])
def test_resize_keeps_images_and_masks_aligned(synthetic_table, size):
    """Shrinking k times averages k x k blocks; a mask pixel stays where ships cover half of it."""
    factor = 64 // size
    config = pipeline.InputConfig(mode="resize", size=size, augment=False, empty_image_fraction=0.3)
    images, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=0), 20)
    sources = [block_mean(tf_image(path), factor) for path in synthetic_table.path]
    for image, mask in zip(images, masks, strict=True):
        distances = [np.abs(image - source).mean() for source in sources]
        index = int(np.argmin(distances))
        assert distances[index] < 0.01
        full = union_mask(synthetic_table.rles[index], (64, 64)).astype(np.float32)
        expected = block_mean(full[:, :, None], factor)[:, :, 0] >= 0.5
        np.testing.assert_array_equal(mask[:, :, 0], expected)
    assert size < 32 or has_ship(masks).any()


@pytest.mark.parametrize("augment", [False, True])
def test_crop_masks_match_the_decoded_masks_at_the_crop(synthetic_table, augment):
    """Each crop's mask is the RLE mask of its source image at the crop, flipped/turned alike."""
    config = crop_config(ship_crop_probability=0.5, empty_image_fraction=0.3, augment=augment)
    images, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=5), 32)
    sources = [tf_image(path) for path in synthetic_table.path]
    transforms = set()
    for image, mask in zip(images, masks, strict=True):
        matches = [
            (transform, found, mask_view)
            for (transform, view), (_, mask_view) in zip(
                dihedral(image), dihedral(mask), strict=True
            )
            for found in locate(view, sources)
        ]
        assert len(matches) == 1, f"crop found {len(matches)} times in the source images"
        transform, (index, top, left), mask_view = matches[0]
        transforms.add(transform)
        expected = union_mask(synthetic_table.rles[index], (64, 64))[
            top : top + 32, left : left + 32
        ]
        np.testing.assert_array_equal(mask_view[:, :, 0], expected)
    if augment:
        assert len(transforms) >= 4
    else:
        assert transforms == {(False, 0)}
    assert has_ship(masks).any()


def test_decode_mask_matches_rle_decode():
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (5, 9), (9, 5), (17, 3), (32, 32), (40, 23)]:
        first = (rng.random((height, width)) < 0.3).astype(np.uint8)
        second = (rng.random((height, width)) < 0.3).astype(np.uint8)
        # Ships of one image come in any order and may overlap: decode_mask takes the union.
        runs = " ".join([rle_encode(second), rle_encode(first)])
        mask = pipeline.decode_mask(runs, height, width).numpy()
        assert mask.shape == (height, width, 1) and mask.dtype == np.float32
        np.testing.assert_array_equal(mask[:, :, 0], first | second)
        single = pipeline.decode_mask(rle_encode(first), height, width).numpy()
        np.testing.assert_array_equal(single[:, :, 0], first)
    assert not pipeline.decode_mask("", 4, 6).numpy().any()


def test_training_stream_survives_an_undecodable_file(synthetic_table, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG \xff\xd9")
    table = synthetic_table.copy()
    table.loc[0, "path"] = str(broken)
    config = crop_config(empty_image_fraction=0.5)
    images, _ = take_batch(pipeline.training_dataset(table, config, seed=0), 100)
    assert len(images) == 100


def evaluation_batches(table, config=None, batch_size=4):
    """All batches of ``evaluation_dataset`` as numpy (positions, images, original sizes)."""
    return [
        tuple(part.numpy() for part in batch)
        for batch in pipeline.evaluation_dataset(table, config, batch_size=batch_size)
    ]


def test_evaluation_dataset(synthetic_table):
    table = synthetic_table.iloc[:10].reset_index(drop=True)
    batches = evaluation_batches(table, batch_size=4)
    assert [len(positions) for positions, _, _ in batches] == [4, 4, 2]
    positions = np.concatenate([batch[0] for batch in batches])
    images = np.concatenate([batch[1] for batch in batches])
    sizes = np.concatenate([batch[2] for batch in batches])
    assert positions.tolist() == list(range(10))
    assert images.shape == (10, 64, 64, 3) and images.dtype == np.float32
    assert sizes.tolist() == [[64, 64]] * 10
    for position, image in zip(positions, images, strict=True):
        np.testing.assert_array_equal(image, tf_image(table.path[position]))
        assert np.abs(image - pil_image(table.path[position])).mean() < 2
    again = np.concatenate([batch[1] for batch in evaluation_batches(table, batch_size=4)])
    np.testing.assert_array_equal(images, again)
    # Beside a busy network, tf.data's autotuner can settle on a pace that idles a core.
    assert not pipeline.evaluation_dataset(table).options().autotune.enabled


def test_evaluation_dataset_resize_mode_and_crop_mode(synthetic_table):
    table = synthetic_table.iloc[:3]
    resize = pipeline.InputConfig(mode="resize", size=32)
    ((_, images, sizes),) = evaluation_batches(table, resize, batch_size=3)
    assert images.shape == (3, 32, 32, 3)
    assert sizes.tolist() == [[64, 64]] * 3  # the original size, to scale predictions back
    ((_, images, _),) = evaluation_batches(table, crop_config(), batch_size=3)
    assert images.shape == (3, 64, 64, 3)


def test_evaluation_dataset_pads_images_of_different_sizes(synthetic_table, tmp_path):
    table = synthetic_table.iloc[:3].reset_index(drop=True)
    rng = np.random.default_rng(0)
    odd = tmp_path / "odd.png"
    pixels = rng.integers(1, 256, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(odd)
    table.loc[1, "path"] = str(odd)
    ((positions, images, sizes),) = evaluation_batches(table, batch_size=3)
    assert positions.tolist() == [0, 1, 2]
    assert images.shape == (3, 64, 70, 3)
    assert sizes.tolist() == [[64, 64], [40, 70], [64, 64]]
    np.testing.assert_array_equal(images[1, :40, :70], pixels)
    assert not images[1, 40:].any()
    np.testing.assert_array_equal(images[0, :, :64], tf_image(table.path[0]))
    assert not images[0, :, 64:].any()


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_evaluation_dataset_drops_corrupt_image_keeping_positions(
    synthetic_table, tmp_path, damage
):
    table = synthetic_table.iloc[:6].reset_index(drop=True)
    broken = tmp_path / "broken.jpg"
    if damage == "truncated":
        data = Path(table.path[2]).read_bytes()
        broken.write_bytes(data[: len(data) // 3])
    else:
        broken.write_text("not an image")
    good_paths = table.path.tolist()
    table.loc[2, "path"] = str(broken)
    batches = evaluation_batches(table, batch_size=2)
    positions = np.concatenate([batch[0] for batch in batches]).tolist()
    images = np.concatenate([batch[1] for batch in batches])
    assert positions == [0, 1, 3, 4, 5]
    for position, image in zip(positions, images, strict=True):
        np.testing.assert_array_equal(image, tf_image(good_paths[position]))


# ---------------------------------------------------------------------------------------------
# list_images
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ["b.jpg", "a.JPEG", "c.png", "notes.txt", "d.tif"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub.jpg").mkdir()
    return folder


def test_list_images_folder(image_folder):
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


# ---------------------------------------------------------------------------------------------
# 5. The synthetic dataset
# ---------------------------------------------------------------------------------------------


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


def test_ensure_synthetic_dataset(tmp_path):
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
