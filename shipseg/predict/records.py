"""Per-image records of an inference run and the tables built from them.

An inference writes, for each image, its mask and overlay PNGs and then a small JSON record
(``records/<image file name>.json``: its submission rows, its ``images.csv`` row, its size and ship
evidence). A record exists only once the image's outputs are complete, so a run that dies at
image 12,000 of 15,606 is resumed by running the same command again: images with a record are
skipped, and ``submission.csv`` is rebuilt from all records, equal to an uninterrupted run's.

The output folder also records the model and the settings it was made with (``inference.json``):
a run with another model or other settings is refused rather than mixed into it.

A resumed run predicts whole batches again, as the uninterrupted run formed them (``to_redo``),
so each image is predicted beside the same neighbours and gets the same probabilities.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import atomic
from shipseg.core.errors import UserError
from shipseg.data import airbus
from shipseg.data.rle import rle_encode_pixels
from shipseg.predict.prediction import Prediction
from shipseg.scoring import ships

RECORDS = "records"
RUN_FILE = "inference.json"
# What --overwrite removes besides the records: everything an inference writes.
OUTPUTS = (
    "masks",
    "overlays",
    "submission.csv",
    "images.csv",
    "ships.csv",
    "ships.geojson",
    "scores.json",
    RUN_FILE,
)


def run_identity(model_path: Path, settings: dict) -> dict:
    """The model (path, size and modification time: a retrained model differs) and settings."""
    stat = model_path.resolve().stat()
    return {
        "model": str(model_path.resolve()),
        "model_bytes": stat.st_size,
        "model_modified_ns": stat.st_mtime_ns,
        "settings": settings,
    }


def open_run(out_dir: Path, identity: dict, overwrite: bool) -> set[str]:
    """Starts or resumes the run in ``out_dir``; returns the names of the images already done.

    Args:
        out_dir: The run's output folder.
        identity: The run's model and settings (``run_identity``).
        overwrite: Remove an earlier run's outputs first, whatever made them.

    Raises:
        UserError: When ``out_dir`` holds a run of another model or other settings (and not
            ``overwrite``).
    """
    run_file = out_dir / RUN_FILE
    if overwrite:
        _remove_outputs(out_dir)
    elif run_file.is_file():
        previous = json.loads(run_file.read_text())
        changed = [key for key in identity if previous.get(key) != identity[key]]
        if changed:
            what = "settings" if changed == ["settings"] else "model"
            raise UserError(
                f"{out_dir}: holds predictions of another {what} ({previous.get('model')}); use "
                "another --out, or --overwrite to replace them"
            )
    atomic.write_json_atomically(run_file, identity)
    written = (out_dir / RECORDS).glob("*.json")
    return {path.name.removesuffix(".json") for path in written if _complete(out_dir, path)}


def _complete(out_dir: Path, record: Path) -> bool:
    """Whether an image's record and pictures survived whole.

    They are not flushed to disk one by one (``write_record``): a machine's crash can leave
    any of them empty, and the image is then done again.
    """
    try:
        if not isinstance(json.loads(record.read_text()), dict):
            return False
    except (OSError, ValueError):
        return False
    stem = Path(record.name.removesuffix(".json")).stem
    pictures = [out_dir / "masks" / f"{stem}.png"]
    if (out_dir / "overlays").is_dir():
        pictures.append(out_dir / "overlays" / f"{stem}.png")
    return all(_is_png(path) for path in pictures)


def _is_png(path: Path) -> bool:
    """Whether a file starts as a PNG does (its first 8 bytes)."""
    try:
        with path.open("rb") as handle:
            return handle.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def to_redo(paths: list[Path], done: set[str], batch_size: int) -> list[Path]:
    """The images to predict: every batch, as an uninterrupted run forms them, not all done.

    The network's output can differ in its last bits with the batch an image is predicted in
    (TensorFlow's CPU kernels depend on the batch size), so a resumed run predicts whole
    batches again: each image meets the same neighbours and gets the same probabilities.

    Args:
        paths: Every image of the run, in order.
        done: The names of the images with a record.
        batch_size: Images per forward pass.
    """
    redo = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        if any(path.name not in done for path in batch):
            redo.extend(batch)
    return redo


def write_record(out_dir: Path, name: str, record: dict) -> None:
    """Writes one image's record, last of its outputs (its presence means they are complete).

    Args:
        out_dir: The run's output folder.
        name: The image's file name.
        record: What ``detection.describe`` made of it.
    """
    # Compact: an internal file, written for every image (0.5 ms less than indented JSON).
    text = json.dumps(record, separators=(",", ":"), default=str)
    path = out_dir / RECORDS / f"{name}.json"
    # Not flushed to disk (atomic.write_atomically's ``durable``): after a machine's crash,
    # open_run redoes an image whose record is missing or unreadable.
    atomic.write_atomically(path, lambda temporary: Path(temporary).write_text(text), durable=False)


def read_record(out_dir: Path, name: str) -> dict:
    """One image's record, as ``write_record`` wrote it."""
    return json.loads((out_dir / RECORDS / f"{name}.json").read_text())


def _remove_outputs(out_dir: Path) -> None:
    for name in (RECORDS, *OUTPUTS):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def ship_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
    """Submission rows of one image: one per ship, or one empty row when there is none."""
    from skimage.measure import regionprops

    height = labels.shape[0]
    rows = [
        (image_id, rle_encode_pixels(ship.coords[:, 0], ship.coords[:, 1], height))
        for ship in regionprops(labels)
    ]
    return rows or [(image_id, "")]


# images.csv: one row per image, beside submission.csv.
IMAGE_COLUMNS = ("ImageId", "ship_probability", "top_pixel_probability", "ships")


def image_row(image_id: str, prediction: Prediction, labels: np.ndarray) -> tuple:
    """One row of ``images.csv``: the image's ship evidence and how many ships were kept.

    ``ship_probability`` is the ship head's (empty for a model without a head): the learnt
    answer to "is there a ship?", which gates the image's ships at the tuned threshold.

    Args:
        image_id: The image's name.
        prediction: Its prediction.
        labels: Its label image (0 for sea, ``k`` for ship ``k``).
    """
    return (
        image_id,
        "" if prediction.ship_probability is None else round(prediction.ship_probability, 6),
        round(float(prediction.probabilities.max(initial=0.0)), 6),
        int(labels.max(initial=0)),
    )


def write_tables(outputs: dict[int, dict], out_dir: Path) -> int:
    """Writes ``submission.csv`` and ``images.csv`` from the images' records in image order.

    Returns:
        The number of ships found.
    """
    done = sorted(outputs)
    rows = [tuple(row) for position in done for row in outputs[position]["rows"]]
    submission = pd.DataFrame(rows, columns=list(airbus.CSV_COLUMNS))
    images = pd.DataFrame(
        [outputs[position]["image_row"] for position in done], columns=IMAGE_COLUMNS
    )
    ship_list = [ship for position in done for ship in image_ships(outputs[position])]
    if rows:
        for name, table in (("submission.csv", submission), ("images.csv", images)):
            atomic.write_atomically(
                out_dir / name, lambda temporary, table=table: table.to_csv(temporary, index=False)
            )
        atomic.write_text_atomically(out_dir / "ships.csv", ships.csv_text(ship_list))
        atomic.write_text_atomically(out_dir / "ships.geojson", ships.geojson(ship_list))
    return int((submission.EncodedPixels != "").sum())


def image_ships(record: dict) -> list[ships.ShipRecord]:
    """One image's ships, from its record (``detection.describe``'s, or as read back).

    A record written before ship records held their mask gets each ship's from its
    submission rows (the same ships, in the same order).
    """
    masks = [rle for _, rle in record["rows"] if rle]
    return [
        ships.ShipRecord.model_validate({"EncodedPixels": rle, **ship})
        for ship, rle in zip(record["ships"], masks, strict=True)
    ]
