"""Reading a dataset folder in the Kaggle layout into one table row per image.

The Airbus Ship Detection data comes as a folder of 768 x 768 JPEGs (``train_v2/``), a CSV of
ship masks (``train_ship_segmentations_v2.csv``, one run-length-encoded row per ship, one empty
row per image without ships) and a folder of unlabelled test images (``test_v2/``). This module
finds that layout, checks it, and reads the CSV (the one reader of it: training, evaluation and
inference's scoring all come through ``read_ship_csv``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from shipseg.core.errors import DataError
from shipseg.data.rle import AIRBUS_IMAGE_SIZE, parse_rle, rle_pixel_count

CSV_NAME = "train_ship_segmentations_v2.csv"


CSV_COLUMNS = ("ImageId", "EncodedPixels")


# Kaggle names first; the real sample in ../shared uses the second names.
TRAIN_DIR_NAMES = ("train_v2", "images")


TEST_DIR_NAMES = ("test_v2", "test_images")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    """Where the parts of a dataset in the Kaggle layout live.

    Attributes:
        root: The dataset directory.
        train_dir: Folder of labelled images (``train_v2/`` or ``images/``).
        csv_path: The ship masks, ``train_ship_segmentations_v2.csv``.
        test_dir: Folder of unlabelled test images, or None when there is none.
    """

    root: Path
    train_dir: Path
    csv_path: Path
    test_dir: Path | None


def find_layout(data_dir: str | os.PathLike) -> DatasetLayout:
    """Locates the image folders and the CSV inside a dataset directory.

    Raises:
        DataError: If the directory, its image folder or its CSV is missing.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data directory does not exist")
    train_dir = next((root / name for name in TRAIN_DIR_NAMES if (root / name).is_dir()), None)
    if train_dir is None:
        raise DataError(f"{root}: no image folder (expected one of {', '.join(TRAIN_DIR_NAMES)}/)")
    csv_path = root / CSV_NAME
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: ship mask CSV is missing")
    test_dir = next((root / name for name in TEST_DIR_NAMES if (root / name).is_dir()), None)
    return DatasetLayout(root, train_dir, csv_path, test_dir)


# Pillow refuses images above about 179 megapixels as "decompression bombs"; a satellite
# scene of 20,000 x 20,000 pixels is an ordinary input here. Callers set their own limits
# (``tiling`` decodes up to this, the service far less).
MAX_SCENE_PIXELS = 1_000_000_000
_PILLOW_LIMIT = threading.Lock()


@contextlib.contextmanager
def pillow_allows_scenes():
    """Pillow's pixel limit raised to ``MAX_SCENE_PIXELS`` for the block (one thread at a time).

    Pillow checks the limit, a module global, when it opens an image: hold this around
    ``Image.open`` only. The lock keeps threads from restoring each other's value.
    """
    from PIL import Image

    with _PILLOW_LIMIT:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_SCENE_PIXELS
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _header(source) -> tuple[str, tuple[int, int]] | None:
    """An image's format and ``(height, width)`` from its header, or None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with pillow_allows_scenes():
            image = Image.open(source)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    with image:
        return image.format, image.size[::-1]


def inspect_image_file(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """Cheaply checks that an image file looks complete and reads its size, without decoding it.

    Decoding 192,556 JPEGs to check them would take longer than a training epoch, so this reads
    only the header (for the size) and the last bytes: an empty, foreign or cut-off download fails
    here. Images that pass but still do not decode are skipped by the tf.data input.

    Returns:
        ``(problem, (height, width))``: problem is None when the file looks fine, else a short
        description; the size is None when it could not be read.
    """
    if not Path(path).is_file():
        return "missing", None
    header = _header(path)
    if header is None:
        return "not a readable JPEG or PNG image", None
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 2))
        return _checked(*header, handle.read(2))


def _checked(image_format: str, size: tuple[int, int], last_bytes: bytes) -> tuple:
    """``(problem, size)`` of an image of this format and size ending in these bytes."""
    if image_format not in ("JPEG", "PNG"):
        return f"{image_format} is not a JPEG or PNG image", None
    # A JPEG ends with the EOI marker; a cut-off download does not.
    if image_format == "JPEG" and last_bytes != b"\xff\xd9":
        return "truncated JPEG (no end marker)", size
    return None, size


def _describe_skipped(kind: str, names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {kind}: {shown}{more}"


def read_ship_csv(
    csv_path: str | os.PathLike, max_pixels: int = AIRBUS_IMAGE_SIZE * AIRBUS_IMAGE_SIZE * 16
) -> pd.Series:
    """Reads a ship CSV (``ImageId,EncodedPixels``, one row per ship) into ships per image.

    The one reader of the format: training data and inference's ``--labels`` both come here.

    Args:
        csv_path: The CSV file.
        max_pixels: Largest pixel number an RLE may reach (images' sizes are checked later).

    Returns:
        Each image's ship RLEs as a tuple (empty for a row without ship), indexed by the
        sorted ``ImageId``.

    Raises:
        DataError: For a missing or unreadable file, wrong columns, or an RLE that does not
            parse (naming the line).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: ship mask CSV is missing")
    try:
        rows = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{csv_path}: not a readable CSV ({error})") from None
    if tuple(rows.columns) != CSV_COLUMNS:
        raise DataError(
            f"{csv_path}: columns are {list(rows.columns)}, expected {list(CSV_COLUMNS)}"
        )
    rows["EncodedPixels"] = rows["EncodedPixels"].str.strip()
    for line, (image_id, rle) in enumerate(
        zip(rows.ImageId, rows.EncodedPixels, strict=True), start=2
    ):
        try:
            parse_rle(rle, max_pixels)
        except ValueError as error:
            raise DataError(f"{csv_path}, line {line} ({image_id}): {error}") from None
    return rows.groupby("ImageId").EncodedPixels.agg(lambda rles: tuple(r for r in rles if r))


def read_dataset(data_dir: str | os.PathLike, check_images: bool = True, log=print) -> pd.DataFrame:
    """Reads a dataset in the Kaggle layout into one row per image.

    Images listed in the CSV but missing on disk, and files that are not complete images, are
    reported through ``log`` (count and first names) and left out.

    Args:
        data_dir: Directory with ``train_v2/`` (or ``images/``) and the ship CSV.
        check_images: Check each file's header, end marker and that its masks fit its size
            (see ``inspect_image_file``); otherwise only that the file exists.
        log: Where to report skipped images; a function taking one string.

    Returns:
        A DataFrame sorted by ``ImageId`` with columns ``ImageId``, ``path`` (str),
        ``ship_count`` (int), ``rles`` (tuple of str, one per ship), ``ship_pixels`` (int) and
        ``EncodedPixels`` (all ship runs of the image joined with spaces, for the tf.data input).

    Raises:
        DataError: For a missing directory or CSV, a CSV with the wrong columns, an RLE row that
            does not parse, or a dataset left with no usable image.
    """
    layout = find_layout(data_dir)
    rles = read_ship_csv(layout.csv_path)
    table = pd.DataFrame({"ImageId": rles.index, "rles": rles.to_numpy()})
    table["ship_count"] = table.rles.map(len).astype(int)
    table["ship_pixels"] = table.rles.map(lambda ships: sum(map(rle_pixel_count, ships)))
    table["EncodedPixels"] = table.rles.map(" ".join)
    table["path"] = [str(layout.train_dir / image_id) for image_id in table.ImageId]
    problems = {
        image_id: _image_problem(Path(path), ships, check_images)
        for image_id, path, ships in zip(table.ImageId, table.path, table.rles, strict=True)
    }
    _report_skipped(problems, layout, log)
    table = table[[problems[name] is None for name in table.ImageId]].reset_index(drop=True)
    if table.empty:
        raise DataError(
            f"{layout.root}: no usable image "
            f"(all {len(problems)} listed images are missing or broken)"
        )
    return table[["ImageId", "path", "ship_count", "rles", "ship_pixels", "EncodedPixels"]]


def _image_problem(path: Path, rles: Sequence[str], check_image: bool) -> str | None:
    """What is wrong with one listed image ("missing", a broken file, masks that do not fit)."""
    if not check_image:
        return None if path.exists() else "missing"
    problem, shape = inspect_image_file(path)
    if problem is None and rles:
        try:
            for rle in rles:
                parse_rle(rle, shape[0] * shape[1])
        except ValueError as error:
            problem = f"mask does not fit the {shape[0]} x {shape[1]} image: {error}"
    return problem


def _report_skipped(problems: dict[str, str | None], layout: DatasetLayout, log) -> None:
    """Logs the images left out: missing ones, then broken ones (count and first names)."""
    missing = [name for name, problem in problems.items() if problem == "missing"]
    broken = [
        f"{name} ({problem})"
        for name, problem in problems.items()
        if problem not in (None, "missing")
    ]
    if missing:
        log(
            f"{layout.train_dir}: skipped "
            + _describe_skipped("images listed in the CSV but not on disk", missing)
        )
    if broken:
        log(f"{layout.train_dir}: skipped " + _describe_skipped("broken images", broken))


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expands files, folders and glob patterns into a list of image files, without duplicates.

    Folders contribute their JPEG and PNG files (sorted); files are taken as given, whatever
    their suffix, so that a bad file is reported by the reader rather than silently ignored.

    Raises:
        DataError: If a path or pattern matches nothing.
    """
    found: list[Path] = []
    for item in map(str, paths):
        path = Path(item)
        if path.is_dir():
            matches = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
        if not matches:
            raise DataError(f"{item}: no image file matches")
        found.extend(matches)
    return list(dict.fromkeys(found))
