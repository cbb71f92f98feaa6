"""Run-length encoding (shipseg.data.rle): round trips, the Kaggle definition, malformed input, and
the decoder against real rows of the Airbus sample (skipped without it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import csv_rows, pil_image
from shipseg.data.rle import (
    parse_rle,
    rle_decode,
    rle_encode,
    rle_encode_pixels,
    rle_pixel_count,
    ships_to_label_image,
)


def reference_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The Kaggle definition, pixel by pixel: pixel k (1-based) is row (k-1) % H, col (k-1) // H."""
    height, _ = shape
    mask = np.zeros(shape, dtype=np.uint8)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2], strict=True):
        for k in range(start, start + length):
            mask[(k - 1) % height, (k - 1) // height] = 1
    return mask


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


def test_real_airbus_rows_decode_to_their_known_pixel_counts_and_places(airbus_sample):
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


@pytest.mark.parametrize("seed", range(5))
def test_encoding_a_ships_pixels_gives_the_same_string_as_encoding_its_mask(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 40, size=2)
    mask = rng.random((height, width)) < rng.uniform(0.05, 0.9)
    rows, columns = np.nonzero(mask)
    order = rng.permutation(len(rows))  # any order of the pixels
    assert rle_encode_pixels(rows[order], columns[order], height) == rle_encode(mask)


def test_a_run_that_wraps_to_the_next_column_stays_one_run():
    mask = np.zeros((4, 3), dtype=bool)
    mask[2:, 0] = mask[:2, 1] = True  # column-major: pixels 3, 4, 5, 6
    assert rle_encode_pixels(*np.nonzero(mask), 4) == rle_encode(mask) == "3 4"
