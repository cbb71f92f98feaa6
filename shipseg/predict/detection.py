"""From a trained model's prediction to the image's ships: the one path every output takes.

``inference.py`` (files on disk) and ``serve.py`` (images over HTTP) both read a model's tuned
settings with ``load_settings`` and turn each prediction into ships with ``describe``, so the
same image gives the same ships, run-length rows and geometry whichever way it arrived.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from shipseg.core import atomic
from shipseg.core.errors import UserError
from shipseg.data.inputs import InputConfig
from shipseg.model import exporting
from shipseg.predict import drawing, records
from shipseg.predict.prediction import Prediction, ship_score
from shipseg.scoring import metrics as scoring
from shipseg.scoring import ships

# Post-processing settings a user may override (command-line flags, the service's options).
OVERRIDABLE = (
    "threshold",
    "image_threshold",
    "ship_threshold",
    "min_ship_pixels",
    "ship_shape",
    "flip_tta",
)
PROBABILITIES = ("threshold", "image_threshold", "ship_threshold")


def load_settings(
    model_path: Path, overrides: Mapping[str, object] | None = None
) -> tuple[InputConfig | None, scoring.PostprocessConfig]:
    """Input handling and post-processing: the model's ``config.json``, then ``overrides``.

    An exported model's are in the ``export.json`` beside it (a copy of the training's).
    ``overrides`` maps names of ``OVERRIDABLE`` to values; None values are ignored.

    Raises:
        UserError: For an overriding probability outside [0, 1] (named as its flag).
    """
    exported = model_path.suffix == ".tflite"
    config_path = model_path.parent / (exporting.EXPORT_JSON if exported else "config.json")
    config = atomic.read_json(config_path) if config_path.is_file() else {}
    if not config:
        print(
            f"warning: {config_path} not found: predicting at full resolution with default "
            "post-processing unless flags say otherwise",
            file=sys.stderr,
        )
    elif config.get("status") != "complete" or "postprocess" not in config:
        print(
            f"warning: {config_path} says training is not complete: its post-processing was not "
            "tuned yet, using defaults unless flags say otherwise",
            file=sys.stderr,
        )
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in PROBABILITIES:
        # Only overrides are checked: a tuned threshold may sit just above 1 ("no image opens").
        if name in given and not 0 <= given[name] <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1]")
    input_config = InputConfig(**config["input"]) if "input" in config else None
    postprocess = scoring.PostprocessConfig(**config.get("postprocess", {}))
    return input_config, dataclasses.replace(postprocess, **given)


def describe(
    name: str,
    prediction: Prediction,
    postprocess: scoring.PostprocessConfig,
    pixel_size: float = ships.DEFAULT_PIXEL_SIZE,
) -> tuple[np.ndarray, dict]:
    """One image's ships: its label image and its record (``shipseg.predict.records``).

    The record holds the submission rows (one run-length row per ship, in label order), the
    ``images.csv`` row, each ship's ``ships.ShipRecord`` as JSON (same order; read them back
    with ``records.image_ships``), the image's shape and its ship evidence.

    Args:
        name: The image's name (its ``ImageId``).
        prediction: The image's prediction.
        postprocess: How probabilities become ships.
        pixel_size: Metres per pixel.
    """
    probabilities = prediction.probabilities
    labels = scoring.probabilities_to_ships(probabilities, postprocess, prediction.ship_probability)
    found = ships.ship_records(name, labels, probabilities, prediction.ship_probability, pixel_size)
    record = {
        "rows": records.ship_rows(name, labels),
        "image_row": records.image_row(name, prediction, labels),
        "ships": [ship.model_dump(mode="json") for ship in found],
        "shape": list(labels.shape),
        "ship_score": ship_score(prediction),
    }
    return labels, record


def overlay_png(image: np.ndarray, labels: np.ndarray) -> bytes:
    """The image in grey with its predicted ships in red, as PNG bytes."""
    import zlib

    ship_pixels = labels > 0 if labels.any() else None
    return drawing.encode_png(
        drawing.overlay_indices(image, ship_pixels), drawing.OVERLAY_PALETTE, zlib.Z_HUFFMAN_ONLY
    )


def mask_png(labels: np.ndarray) -> bytes:
    """The predicted ships as a grey-level PNG, one level per ship (0 = sea)."""
    if not labels.any():
        return drawing.empty_mask_png(*labels.shape)
    return drawing.encode_png(drawing.label_png(labels))
