"""Data for ship segmentation: the Kaggle layout, RLE, the split, tf.data input, synthetic data.

The Airbus Ship Detection data comes as a folder of 768 x 768 JPEGs (``train_v2/``), a CSV of
ship masks (``train_ship_segmentations_v2.csv``, one run-length-encoded row per ship, one empty
row per image without ships) and a folder of unlabelled test images (``test_v2/``). This module
reads that layout, turns it into one table row per image, splits it reproducibly, and feeds it to
Keras through ``tf.data``. It also writes a synthetic dataset in exactly the same layout so that
every command runs on a machine without the real data.

Sections:
    1. Run-length encoding (pure numpy).
    2. Reading a dataset directory.
    3. The train/val/test split.
    4. tf.data input (training crops, evaluation images).
    5. The synthetic dataset.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

AIRBUS_IMAGE_SIZE = 768
CSV_NAME = "train_ship_segmentations_v2.csv"
CSV_COLUMNS = ("ImageId", "EncodedPixels")
# Kaggle names first; the real sample in ../shared uses the second names.
TRAIN_DIR_NAMES = ("train_v2", "images")
TEST_DIR_NAMES = ("test_v2", "test_images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SYNTHETIC_DIR = Path("results") / "synthetic-data"


class DataError(Exception):
    """A problem with the user's data: the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------
# 1. Run-length encoding
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# 2. Reading a dataset directory
# ---------------------------------------------------------------------------------------------


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


def inspect_image_file(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """Cheaply checks that an image file looks complete and reads its size, without decoding it.

    Decoding 192,556 JPEGs to check them would take longer than a training epoch, so this reads
    only the header (for the size) and the last bytes: an empty, foreign or cut-off download fails
    here. Images that pass but still do not decode are skipped by the tf.data input.

    Returns:
        ``(problem, (height, width))``: problem is None when the file looks fine, else a short
        description; the size is None when it could not be read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image_format, (width, height) = image.format, image.size
    except FileNotFoundError:
        return "missing", None
    except (UnidentifiedImageError, OSError, ValueError):
        return "not a readable JPEG or PNG image", None
    if image_format not in ("JPEG", "PNG"):
        return f"{image_format} is not a JPEG or PNG image", None
    if image_format == "JPEG":
        with open(path, "rb") as handle:
            handle.seek(-2, os.SEEK_END)
            # A JPEG ends with the EOI marker; a cut-off download does not.
            if handle.read(2) != b"\xff\xd9":
                return "truncated JPEG (no end marker)", (height, width)
    return None, (height, width)


def _describe_skipped(kind: str, names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {kind}: {shown}{more}"


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
    try:
        rows = pd.read_csv(layout.csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{layout.csv_path}: not a readable CSV ({error})") from None
    if tuple(rows.columns) != CSV_COLUMNS:
        raise DataError(
            f"{layout.csv_path}: columns are {list(rows.columns)}, expected {list(CSV_COLUMNS)}"
        )
    rows["EncodedPixels"] = rows["EncodedPixels"].str.strip()
    for line, (image_id, rle) in enumerate(
        zip(rows.ImageId, rows.EncodedPixels, strict=True), start=2
    ):
        try:
            parse_rle(rle, AIRBUS_IMAGE_SIZE * AIRBUS_IMAGE_SIZE * 16)
        except ValueError as error:
            raise DataError(f"{layout.csv_path}, line {line} ({image_id}): {error}") from None

    ships = rows[rows.EncodedPixels != ""]
    rles_per_image = ships.groupby("ImageId").EncodedPixels.agg(tuple)
    table = pd.DataFrame({"ImageId": sorted(rows.ImageId.unique())})
    table["rles"] = [rles_per_image.get(image_id, ()) for image_id in table.ImageId]
    table["ship_count"] = table.rles.map(len).astype(int)
    table["ship_pixels"] = table.rles.map(lambda rles: sum(map(rle_pixel_count, rles)))
    table["EncodedPixels"] = table.rles.map(" ".join)
    table["path"] = [str(layout.train_dir / image_id) for image_id in table.ImageId]

    problems: dict[str, str | None] = {}
    for image_id, path, rles in zip(table.ImageId, table.path, table.rles, strict=True):
        if not check_images:
            problems[image_id] = None if Path(path).exists() else "missing"
            continue
        problem, shape = inspect_image_file(Path(path))
        if problem is None and rles:
            try:
                for rle in rles:
                    parse_rle(rle, shape[0] * shape[1])
            except ValueError as error:
                problem = f"mask does not fit the {shape[0]} x {shape[1]} image: {error}"
        problems[image_id] = problem
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
    table = table[[problems[name] is None for name in table.ImageId]].reset_index(drop=True)
    if table.empty:
        raise DataError(
            f"{layout.root}: no usable image "
            f"(all {len(problems)} listed images are missing or broken)"
        )
    return table[["ImageId", "path", "ship_count", "rles", "ship_pixels", "EncodedPixels"]]


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


# ---------------------------------------------------------------------------------------------
# 3. The train/val/test split
# ---------------------------------------------------------------------------------------------


def ship_count_stratum(ship_count: int) -> str:
    """Groups images by ship count for stratification: 0, 1, 2, 3-4 and 5+ ships."""
    if ship_count >= 5:
        return "5+"
    if ship_count >= 3:
        return "3-4"
    return str(ship_count)


def make_split(
    table: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> pd.DataFrame:
    """Splits images into train/val/test, stratified by ship count.

    Each stratum (see ``ship_count_stratum``) is shuffled with the seed and cut by the fractions,
    so every part keeps the natural share of empty images and of crowded images.

    Args:
        table: The output of ``read_dataset``.
        val_fraction: Share of images for validation.
        test_fraction: Share of images for the final test.
        seed: Fixes the assignment.

    Returns:
        A DataFrame with columns ``ImageId`` and ``split`` (``train``, ``val`` or ``test``),
        sorted by ``ImageId``.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    parts = []
    strata = table.ship_count.map(ship_count_stratum)
    for stratum in sorted(strata.unique()):
        ids = np.array(sorted(table.ImageId[strata == stratum]))
        rng.shuffle(ids)
        n_test = int(round(len(ids) * test_fraction))
        n_val = int(round(len(ids) * val_fraction))
        labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(ids) - n_test - n_val)
        parts.append(pd.DataFrame({"ImageId": ids, "split": labels}))
    return pd.concat(parts).sort_values("ImageId").reset_index(drop=True)


def make_folds(table: pd.DataFrame, folds: int, seed: int = 0) -> pd.Series:
    """Assigns every image to one of ``folds`` folds, stratified by ship count.

    scikit-learn's ``StratifiedKFold`` on the strata of ``ship_count_stratum``; a stratum with
    fewer images than folds is merged into the next more common one (5+ ships into 3-4, and so
    on), so every fold keeps the natural share of empty and of crowded images.

    Returns:
        The fold (0 to ``folds - 1``) of each image, indexed by ``ImageId``.

    Raises:
        ValueError: For fewer than 2 folds, or fewer images than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"K-fold needs at least 2 folds, got {folds}")
    if len(table) < folds:
        raise ValueError(f"{len(table)} images cannot make {folds} folds")
    strata = table.ship_count.map(ship_count_stratum).to_numpy()
    order = ["0", "1", "2", "3-4", "5+"]
    for position in range(len(order) - 1, 0, -1):
        if 0 < (strata == order[position]).sum() < folds:
            strata[strata == order[position]] = order[position - 1]
    if (strata == "0").sum() < folds:  # Only possible on a tiny table: no stratification left.
        strata[:] = "0"
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(len(table), dtype=int)
    for fold, (_, test_positions) in enumerate(splitter.split(np.zeros(len(table)), strata)):
        assignment[test_positions] = fold
    return pd.Series(assignment, index=table.ImageId.to_numpy(), name="fold")


def sample_images(table: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` rows, drawn with the seed, keeping the share of images with ships.

    Used to bound the cost of whole-image validation on large splits without changing what it
    measures (the natural share of empty images).
    """
    if limit is None or limit >= len(table):
        return table.reset_index(drop=True)
    if limit < 1:
        raise ValueError(f"cannot keep {limit} images: at least 1 is needed")
    has_ship = table.ship_count > 0
    with_ships = min(
        int(has_ship.sum()), max(int(round(limit * has_ship.mean())), 1 if has_ship.any() else 0)
    )
    parts = [
        table[has_ship].sample(n=with_ships, random_state=seed),
        table[~has_ship].sample(n=limit - with_ships, random_state=seed),
    ]
    return pd.concat(parts).sort_values("ImageId").reset_index(drop=True)


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any thread runs
    # (two threads doing this at once could leave the process's umask at 0).
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def write_atomically(path: str | os.PathLike, write, suffix: str | None = None) -> None:
    """Writes a file through a temporary file in the same folder, then renames it into place.

    Args:
        path: Destination.
        write: Function that takes the temporary path and writes the content there.
        suffix: Ending of the temporary file's name, for writers that check it (default: the
            destination's last suffix).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix
    )
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates owner-only files; give the result the permissions of a normal file.
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes text to ``path`` atomically."""
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def write_json_atomically(path: str | os.PathLike, data) -> None:
    """Writes JSON to ``path`` atomically."""
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_split(split: pd.DataFrame, path: str | os.PathLike) -> None:
    """Saves a split as CSV (``ImageId,split``), atomically."""
    write_atomically(path, lambda temporary: split.to_csv(temporary, index=False))


def load_split(path: str | os.PathLike, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Loads a split saved by ``save_split``.

    Args:
        path: The split CSV.
        table: When given, images of the split that the dataset no longer has are dropped, with
            an error if that leaves a part empty.

    Raises:
        DataError: If the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file is missing")
    try:
        split = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable split file ({error})") from None
    if list(split.columns) != ["ImageId", "split"] or not split.split.isin(SPLIT_NAMES).all():
        raise DataError(
            f"{path}: not a split file (expected columns ImageId,split with train/val/test)"
        )
    if table is not None:
        split = split[split.ImageId.isin(table.ImageId)]
        for name in ("train", "val"):
            if not (split.split == name).any():
                raise DataError(f"{path}: no {name} image of this split is in the dataset")
    return split.sort_values("ImageId").reset_index(drop=True)


def select_split(table: pd.DataFrame, split: pd.DataFrame, *names: str) -> pd.DataFrame:
    """Returns the rows of ``table`` whose image is in one of the named parts of ``split``."""
    ids = set(split.ImageId[split.split.isin(names)])
    return table[table.ImageId.isin(ids)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# 4. tf.data input
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How images become the network's input; recorded with every run so inference repeats it.

    Attributes:
        mode: ``"crop"`` trains on random crops at full resolution (the default: downscaling
            loses small ships); ``"resize"`` trains on whole images resized to ``size``.
        size: Crop size, or the side images are resized to.
        ship_crop_probability: In crop mode, the chance that a crop of a ship image is placed
            to contain a ship (otherwise it is placed uniformly).
        empty_image_fraction: Share of images without ships in each training batch (the data
            has about 78 %; the strongest entries trained with about 20 %).
        augment: Random flips and 90-degree rotations in training.
    """

    mode: str = "crop"
    size: int = 256
    ship_crop_probability: float = 0.9
    empty_image_fraction: float = 0.2
    augment: bool = True

    def __post_init__(self):
        if self.mode not in ("crop", "resize"):
            raise ValueError(f"input mode must be 'crop' or 'resize', got {self.mode!r}")
        if self.size < 8:
            raise ValueError(f"input size must be at least 8, got {self.size}")
        for name in ("ship_crop_probability", "empty_image_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def scale(self, image_size: int) -> float:
        """The factor images of side ``image_size`` are scaled by before the network sees them."""
        return 1.0 if self.mode == "crop" else self.size / image_size


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up banner (CPU features, oneDNN) silenced.

    TensorFlow prints that banner on stderr through absl before any environment variable can
    turn it off; in a command-line tool it would bury a one-line error message. If the import
    fails, stderr is restored first, so the real error is still shown.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _tf():
    # TensorFlow takes seconds to import: the RLE and table functions do not need it.
    import tensorflow as tf

    return tf


def decode_image(path):
    """Reads an image file into a float32 RGB tensor (0-255), whatever its format or channels."""
    tf = _tf()
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.cast(image, tf.float32)


def decode_mask(encoded_pixels, height, width):
    """TensorFlow twin of ``rle_decode`` for the union of an image's ship runs.

    Runs of different ships may come in any order, so unlike ``rle_decode`` this does not require
    sorted runs; overlapping pixels are simply set once.

    Returns:
        A ``float32`` tensor of shape ``(height, width, 1)``.
    """
    tf = _tf()
    values = tf.strings.to_number(tf.strings.split(encoded_pixels), out_type=tf.int64)
    runs = tf.reshape(values, [-1, 2])
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    run_offsets = tf.range(tf.reduce_sum(lengths)) - tf.repeat(
        tf.cumsum(lengths, exclusive=True), lengths
    )
    flat_indices = tf.repeat(starts, lengths) + run_offsets
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    flat = tf.scatter_nd(
        flat_indices[:, None], tf.ones_like(flat_indices, tf.float32), [height * width]
    )
    mask = tf.transpose(tf.reshape(tf.minimum(flat, 1.0), [width, height]))
    return mask[:, :, None]


def _load_example(path, encoded_pixels):
    tf = _tf()
    image = decode_image(path)
    shape = tf.shape(image)
    return image, decode_mask(encoded_pixels, shape[0], shape[1])


def _random_crop(image, mask, size: int, ship_probability: float, seed):
    """Crops ``size`` x ``size``; with ``ship_probability`` the crop contains a ship pixel."""
    tf = _tf()
    shape = tf.shape(image)
    # Images smaller than the crop are padded (never the case for Airbus data).
    image = tf.image.pad_to_bounding_box(
        image, 0, 0, tf.maximum(shape[0], size), tf.maximum(shape[1], size)
    )
    mask = tf.image.pad_to_bounding_box(
        mask, 0, 0, tf.maximum(shape[0], size), tf.maximum(shape[1], size)
    )
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    ship_pixels = tf.where(mask[:, :, 0] > 0)
    n_ship = tf.shape(ship_pixels, out_type=tf.int32)[0]
    want_ship = tf.logical_and(
        n_ship > 0, tf.random.stateless_uniform([], seeds[0]) < ship_probability
    )

    def around_ship():
        index = tf.random.stateless_uniform([], seeds[1], 0, tf.maximum(n_ship, 1), tf.int32)
        pixel = tf.cast(ship_pixels[tf.minimum(index, n_ship - 1)], tf.int32)
        shift = tf.random.stateless_uniform([2], seeds[2], 0, size, tf.int32)
        top = tf.clip_by_value(pixel[0] - shift[0], 0, height - size)
        left = tf.clip_by_value(pixel[1] - shift[1], 0, width - size)
        return top, left

    def anywhere():
        corner = tf.random.stateless_uniform([2], seeds[3], 0, tf.int32.max, tf.int32)
        return corner[0] % (height - size + 1), corner[1] % (width - size + 1)

    top, left = tf.cond(want_ship, around_ship, anywhere)
    return (
        image[top : top + size, left : left + size],
        mask[top : top + size, left : left + size],
    )


def _resize(image, mask, size: int):
    tf = _tf()
    image = tf.image.resize(image, [size, size], method="area")
    # A ship must survive the downscale wherever it covers half a pixel or more.
    mask = tf.cast(tf.image.resize(mask, [size, size], method="area") >= 0.5, tf.float32)
    return image, mask


def _augment(image, mask, seed):
    """Random horizontal flip and 0-3 quarter turns, applied identically to image and mask."""
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 2)
    stacked = tf.concat([image, mask], axis=-1)
    stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[0])
    turns = tf.random.stateless_uniform([], seeds[1], 0, 4, tf.int32)
    stacked = tf.image.rot90(stacked, turns)
    return stacked[:, :, :3], stacked[:, :, 3:]


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Images decoded at once for whole-image prediction: a JPEG of 768 x 768 takes about 3 ms, so
# a few threads keep up with a GPU; more would only compete with the network on a CPU.
DECODING_THREADS = min(4, usable_cores())


def _without_autotuning():
    options = _tf().data.Options()
    options.autotune.enabled = False
    return options


def training_dataset(table: pd.DataFrame, config: InputConfig, seed: int = 0):
    """An endless, shuffled, unbatched stream of training ``(image, mask)`` pairs.

    Images are read from disk as they are needed (nothing is cached), so memory does not grow
    with the number of images. Ship and empty images are two streams mixed in the ratio
    ``config.empty_image_fraction``; each element has its own random seed derived from ``seed``,
    so the stream is reproducible despite parallel decoding.

    Args:
        table: Training rows from ``read_dataset``.
        config: Crop or resize settings.
        seed: Fixes shuffling, mixing, crops and augmentation.

    Returns:
        A ``tf.data.Dataset`` of ``(float32 [size, size, 3] in 0-255, float32 [size, size, 1])``.
        Batch it and pass ``steps_per_epoch`` to ``fit``: the stream never ends.
    """
    tf = _tf()

    def stream(rows: pd.DataFrame, stream_seed: int):
        files = tf.data.Dataset.from_tensor_slices(
            (rows.path.to_numpy(str), rows.EncodedPixels.to_numpy(str))
        )
        return files.shuffle(len(rows), seed=stream_seed, reshuffle_each_iteration=True).repeat()

    with_ships, empty = table[table.ship_count > 0], table[table.ship_count == 0]
    if with_ships.empty and empty.empty:
        raise ValueError("training table is empty")
    if with_ships.empty or empty.empty or config.empty_image_fraction in (0.0, 1.0):
        use_empty = (config.empty_image_fraction > 0 and not empty.empty) or with_ships.empty
        files = stream(empty if use_empty else with_ships, seed)
    else:
        files = tf.data.Dataset.sample_from_datasets(
            [stream(with_ships, seed), stream(empty, seed + 1)],
            weights=[1 - config.empty_image_fraction, config.empty_image_fraction],
            seed=seed + 2,
        )
    element_seeds = tf.data.Dataset.random(seed=seed + 3).batch(2)

    def make_example(files, element_seed):
        image, mask = _load_example(*files)
        crop_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, 2)
        )
        if config.mode == "crop":
            image, mask = _random_crop(
                image, mask, config.size, config.ship_crop_probability, crop_seed
            )
        else:
            image, mask = _resize(image, mask, config.size)
        if config.augment:
            image, mask = _augment(image, mask, augment_seed)
        image.set_shape([config.size, config.size, 3])
        mask.set_shape([config.size, config.size, 1])
        return image, mask

    # No AutoGraph: the branches are tf.cond already, and converting the code costs about a
    # second per dataset, which every trial process would pay. One example per core at a time
    # and no autotuning (see evaluation_dataset): a 4-level U-Net on 256 crops trained at
    # 12.5 images/s on two cores with autotuning, 16-17 without.
    examples = tf.data.Dataset.zip(files, element_seeds).map(
        tf.autograph.experimental.do_not_convert(make_example),
        num_parallel_calls=usable_cores(),
        deterministic=True,
    )
    # A file that passed the header check but still does not decode is dropped, not fatal.
    return examples.ignore_errors().with_options(_without_autotuning())


def evaluation_dataset(table: pd.DataFrame, config: InputConfig | None = None, batch_size: int = 4):
    """Deterministic batches of whole images for validation, testing and inference.

    Images are neither cropped nor augmented; in resize mode they are resized as in training.
    Images of different sizes share a batch by zero-padding at the bottom and right; each
    element carries its original size to cut the prediction back, and its row position in
    ``table`` so that a file that fails to decode (and is dropped) cannot shift predictions onto
    the wrong image.

    Args:
        table: Rows with at least a ``path`` column.
        config: The training input settings; None or crop mode keeps full resolution.
        batch_size: Images per batch.

    Returns:
        A ``tf.data.Dataset`` of ``(int64 [batch] row positions, float32 [batch, H, W, 3],
        int32 [batch, 2] original (height, width))``.
    """
    tf = _tf()
    resize_to = config.size if config is not None and config.mode == "resize" else None

    def load(position, path):
        image = decode_image(path)
        shape = tf.shape(image)[:2]
        if resize_to is not None:
            image = tf.image.resize(image, [resize_to, resize_to], method="area")
        return position, image, shape

    positions = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(table), dtype=np.int64), table.path.to_numpy(str))
    )
    # Fixed parallelism, no autotuning: beside a network that keeps every core busy, tf.data's
    # autotuner sometimes settles on a pace that leaves a core idle for the whole run (passes
    # at exactly 5.85 or 2.93 images/s against 7.4 with these settings, 768 x 768 on 2 cores).
    images = positions.map(
        tf.autograph.experimental.do_not_convert(load),
        num_parallel_calls=DECODING_THREADS,
        deterministic=True,
    )
    images = images.ignore_errors()
    return images.padded_batch(batch_size).prefetch(2).with_options(_without_autotuning())


# ---------------------------------------------------------------------------------------------
# 5. The synthetic dataset
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What ``generate_synthetic_dataset`` makes.

    Attributes:
        train_images: Number of labelled images (``train_v2/``).
        test_images: Number of unlabelled images (``test_v2/``).
        image_size: Side of the square images (768 like Airbus; smaller for fast runs).
        empty_fraction: Share of labelled images without ships (Airbus: 0.78).
        max_ships: Most ships in one image (Airbus: 15).
        seed: Fixes every pixel and every ship.
    """

    train_images: int = 240
    test_images: int = 12
    image_size: int = 256
    empty_fraction: float = 0.78
    max_ships: int = 15
    seed: int = 0


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Value noise: a coarse random grid bilinearly upsampled to ``size`` (smooth blotches)."""
    coarse = rng.standard_normal((size // cell + 2, size // cell + 2))
    positions = np.arange(size) / cell
    low = positions.astype(int)
    frac = positions - low
    rows = coarse[low] * (1 - frac)[:, None] + coarse[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def synthetic_sea(rng: np.random.Generator, size: int) -> np.ndarray:
    """A sea-like RGB background: smooth colour variations, swell lines and sensor grain."""
    base = np.array([30, 55, 70], dtype=np.float64) + rng.uniform(-12, 12, 3)
    texture = sum(
        _smooth_noise(rng, size, max(2, size // divisor)) * weight
        for divisor, weight in ((3, 10.0), (12, 5.0), (48, 2.5))
    )
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:size, 0:size]
    wavelength = rng.uniform(6, 14) * size / 256
    swell = 3.0 * np.sin((rows * np.cos(angle) + cols * np.sin(angle)) * 2 * np.pi / wavelength)
    grain = rng.normal(0, 2.5, (size, size, 3))
    image = base + (texture + swell)[:, :, None] * np.array([0.6, 0.9, 1.0]) + grain
    return np.clip(image, 0, 255)


def oriented_rectangle(center, length: float, width: float, angle: float, shape) -> np.ndarray:
    """A filled rotated rectangle as a boolean mask of ``shape``."""
    from skimage.draw import polygon

    direction = np.array([np.sin(angle), np.cos(angle)])  # (row, col)
    normal = np.array([direction[1], -direction[0]])
    half_l, half_w = direction * length / 2, normal * width / 2
    corners = np.array(
        [
            center + half_l + half_w,
            center + half_l - half_w,
            center - half_l - half_w,
            center - half_l + half_w,
        ]
    )
    mask = np.zeros(shape, dtype=bool)
    rr, cc = polygon(corners[:, 0], corners[:, 1], shape)
    mask[rr, cc] = True
    return mask


def draw_ships(rng: np.random.Generator, image: np.ndarray, count: int) -> list[np.ndarray]:
    """Paints ``count`` non-touching ships into ``image`` in place and returns their masks.

    Ships are filled oriented rectangles 3 to 100 pixels long (at most a third of the image, so
    small synthetic images still hold them), log-uniformly distributed as on Airbus images, 3 to
    7 times longer than wide, mostly brighter than the sea as on the real images.
    """
    from skimage.morphology import dilation, disk

    size = image.shape[0]
    longest = min(100.0, size / 3)
    occupied = np.zeros((size, size), dtype=bool)
    masks = []
    for _ in range(count * 20):
        if len(masks) == count:
            break
        length = np.exp(rng.uniform(np.log(3), np.log(max(longest, 3.0))))
        width = max(1.5, length / rng.uniform(3, 7))
        center = rng.uniform(length / 2, size - length / 2, 2)
        mask = oriented_rectangle(center, length, width, rng.uniform(0, np.pi), (size, size))
        # Kaggle labels never overlap; keep a gap so each ship stays one separate region.
        if not mask.any() or (dilation(mask, disk(2)) & occupied).any():
            continue
        colour = rng.uniform(150, 250, 3) if rng.random() < 0.85 else rng.uniform(5, 25, 3)
        image[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        occupied |= mask
        masks.append(mask)
    return masks


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def generate_synthetic_dataset(
    out_dir: str | os.PathLike, config: SyntheticConfig = SyntheticConfig()
) -> Path:
    """Writes a synthetic dataset in the exact Kaggle layout.

    The dataset is built in a temporary folder next to ``out_dir`` and renamed into place, so an
    interrupted run never leaves a partial dataset. Same config, same bytes.

    Args:
        out_dir: Folder to create; it must not exist yet.
        config: Sizes, share of empty images and seed.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        rng = np.random.default_rng(config.seed)
        (staging / "train_v2").mkdir()
        (staging / "test_v2").mkdir()
        rows = []
        for index in range(config.train_images + config.test_images):
            is_test = index >= config.train_images
            image_id = f"{rng.integers(16**9):09x}.jpg"
            image = synthetic_sea(rng, config.image_size)
            has_ships = rng.random() >= config.empty_fraction
            count = min(config.max_ships, int(rng.geometric(0.45))) if has_ships else 0
            masks = draw_ships(rng, image, count)
            _save_jpeg(staging / ("test_v2" if is_test else "train_v2") / image_id, image)
            if not is_test:
                rows += [(image_id, rle_encode(mask)) for mask in masks] or [(image_id, "")]
        pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(staging / CSV_NAME, index=False)
        (staging / "synthetic.json").write_text(
            json.dumps(dataclasses.asdict(config), indent=2) + "\n"
        )
        os.chmod(staging, 0o755)
        try:
            os.replace(staging, out_dir)
        except OSError:
            # Another process generated the same dataset first: keep theirs if it matches.
            marker = out_dir / "synthetic.json"
            if not marker.is_file() or json.loads(marker.read_text()) != dataclasses.asdict(config):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_synthetic_dataset(
    out_dir: str | os.PathLike = DEFAULT_SYNTHETIC_DIR, config: SyntheticConfig = SyntheticConfig()
) -> Path:
    """Returns a synthetic dataset made with ``config``, generating it on first use.

    A folder made with another configuration is replaced, so the data always matches the config.
    """
    out_dir = Path(out_dir)
    marker = out_dir / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == dataclasses.asdict(config):
        return out_dir
    if out_dir.exists():
        if not marker.is_file():
            raise DataError(
                f"{out_dir}: exists but is not a synthetic dataset; refusing to replace it"
            )
        shutil.rmtree(out_dir)
    return generate_synthetic_dataset(out_dir, config)
