"""Per-image records of an inference run: what makes it resumable, and keeps runs apart.

An inference writes, for each image, its mask and overlay PNGs and then a small JSON record
(``records/<image>.json``: its submission rows, its ``images.csv`` row, its size and ship
evidence). A record exists only once the image's outputs are complete, so a run that dies at
image 12,000 of 15,606 is resumed by running the same command again: images with a record are
skipped, and ``submission.csv`` is rebuilt from all records, equal to an uninterrupted run's.

The output folder also records the model and the settings it was made with (``inference.json``):
a run with another model or other settings is refused rather than mixed into it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shipseg import atomic
from shipseg.cli import UserError

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
    return {path.stem for path in (out_dir / RECORDS).glob("*.json")}


def write_record(out_dir: Path, name: str, record: dict) -> None:
    """Writes one image's record, last of its outputs (its presence means they are complete)."""
    atomic.write_json_atomically(out_dir / RECORDS / f"{Path(name).stem}.json", record)


def read_record(out_dir: Path, name: str) -> dict:
    """One image's record, as ``write_record`` wrote it."""
    return json.loads((out_dir / RECORDS / f"{Path(name).stem}.json").read_text())


def _remove_outputs(out_dir: Path) -> None:
    for name in (RECORDS, *OUTPUTS):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
