"""Run-length encoding of ship masks, as in the Kaggle CSV (pure numpy, no TensorFlow).

Pixels are numbered from 1, top to bottom then left to right (column-major), and a mask is a
list of ``start length`` pairs. One row of the CSV is one ship.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AIRBUS_IMAGE_SIZE = 768


def parse_rle(rle: str | float | None, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Parses and validates one Kaggle RLE string.

    Args:
        rle: ``"start length start length ..."`` with 1-based starts in column-major order.
            An empty string, None or NaN (what pandas reads for an empty cell) means no pixels.
        num_pixels: Number of pixels in the image (height * width).

    Returns:
        ``(starts, lengths)``: 0-based run starts and run lengths, both int64.

    Raises:
        ValueError: If the string is not a valid RLE for an image of ``num_pixels`` pixels.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if not tokens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(tokens) % 2:
        raise ValueError(
            f"RLE has an odd number of values ({len(tokens)}): it must be start/length pairs"
        )
    # ASCII digits with an optional "-" only: int() alone also takes "1_0", "+3" and non-ASCII
    # digits, and numpy overflows (OverflowError, not ValueError) past int64.
    bad = next((t for t in tokens if not (t.isascii() and t.removeprefix("-").isdigit())), None)
    if bad is not None:
        raise ValueError(f"RLE contains a value that is not an integer: {bad!r}")
    numbers = [int(token) for token in tokens]
    huge = next((number for number in numbers if abs(number) >= 2**62), None)
    if huge is not None:
        raise ValueError(f"RLE value {huge} is too large for any image")
    values = np.array(numbers, dtype=np.int64)
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any():
        raise ValueError(f"RLE start {starts[starts < 0][0] + 1} is below 1 (starts are 1-based)")
    if (lengths <= 0).any():
        raise ValueError(
            f"RLE has a run of length {lengths[lengths <= 0][0]}: lengths must be >= 1"
        )
    ends = starts + lengths
    if (ends > num_pixels).any():
        bad = int(np.argmax(ends > num_pixels))
        raise ValueError(
            f"RLE run {starts[bad] + 1} {lengths[bad]} ends past the image ({num_pixels} pixels)"
        )
    if (starts[1:] < ends[:-1]).any():
        bad = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise ValueError(
            f"RLE runs are unsorted or overlap: run starting at {starts[bad] + 1} begins before "
            f"the previous run ends at {ends[bad - 1]}"
        )
    return starts, lengths


def rle_decode(rle: str | float | None, shape: tuple[int, int] = (768, 768)) -> np.ndarray:
    """Decodes one Kaggle RLE string into a binary mask.

    Vectorised: the runs become flat pixel indices with one ``np.repeat`` and are written with a
    single scatter, so the cost does not depend on a Python loop over runs.

    Args:
        rle: RLE string (1-based starts, column-major pixel order); empty or NaN for no ship.
        shape: ``(height, width)`` of the image.

    Returns:
        A ``uint8`` array of ``shape`` with 1 on the encoded pixels and 0 elsewhere.

    Raises:
        ValueError: If the RLE is malformed (see ``parse_rle``).
    """
    height, width = shape
    starts, lengths = parse_rle(rle, height * width)
    flat = np.zeros(height * width, dtype=np.uint8)
    if len(starts):
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat[np.repeat(starts, lengths) + offsets] = 1
    # Kaggle numbers pixels down the columns: the flat vector is the transposed image.
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encodes a binary mask as a Kaggle RLE string.

    Args:
        mask: 2-D array; every non-zero pixel is part of the object.

    Returns:
        ``"start length ..."`` with 1-based starts in column-major order; ``""`` for an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.concatenate([[0], (mask.T.reshape(-1) != 0).astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = changes[0::2], changes[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2], runs[1::2] = starts + 1, ends - starts
    return " ".join(map(str, runs))


def rle_encode_pixels(rows: np.ndarray, columns: np.ndarray, height: int) -> str:
    """The RLE of the pixels at ``(rows, columns)`` of an image ``height`` pixels tall.

    The same string as ``rle_encode`` of their mask, computed from the pixels alone: a ship
    of a 10,000 x 10,000 scene costs its own pixels, not a pass over the whole scene.

    Args:
        rows: Row index of each pixel (0-based), in any order, none repeated.
        columns: Column index of each pixel, aligned with ``rows``.
        height: The image's height in pixels: the stride of the column-major numbering.
    """
    if not len(rows):
        return ""
    index = np.sort(np.asarray(columns, dtype=np.int64) * height + np.asarray(rows))
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = index[np.concatenate([[0], breaks])]
    ends = index[np.concatenate([breaks - 1, [len(index) - 1]])]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2], runs[1::2] = starts + 1, ends - starts + 1
    return " ".join(map(str, runs))


def rle_pixel_count(rle: str | float | None) -> int:
    """Returns the number of pixels an RLE string covers (the sum of its run lengths)."""
    if not isinstance(rle, str) or not rle.strip():
        return 0
    return int(np.asarray(rle.split()[1::2], dtype=np.int64).sum())


def ships_to_label_image(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Decodes the ships of one image into a label image (0 background, ship ``i`` is ``i + 1``).

    Args:
        rles: One RLE string per ship.
        shape: ``(height, width)`` of the image.

    Returns:
        An ``int32`` array of ``shape``.
    """
    labels = np.zeros(shape, dtype=np.int32)
    for index, rle in enumerate(rles, start=1):
        labels[rle_decode(rle, shape) > 0] = index
    return labels
