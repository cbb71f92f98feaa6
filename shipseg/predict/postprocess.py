"""Choosing the post-processing on validation images: pixel threshold, size, shape, gate.

The network gives probabilities; what is scored and submitted are ships. Between them sit a
pixel threshold, a minimum ship size, the ships' outline (as predicted, or their oriented box)
and the image-level gate (the ship head's probability, or the top pixel's).
``tune_postprocess`` chooses all four on the validation images for the F2.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from shipseg.core import errors
from shipseg.data import inputs
from shipseg.predict.prediction import labelled_predictions, ship_score
from shipseg.scoring import metrics as scoring
from shipseg.scoring import outlines

# The post-processing grid tried on validation images (the image-level threshold is found
# exactly for each setting); the best F2 becomes inference's default.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


MIN_SHIP_PIXELS = (0, 10, 30, 100)
# "mask" last: where both outlines score the same, the predicted one stays.
SHAPES = tuple(sorted(outlines.SHIP_SHAPES, key=lambda shape: shape == "mask"))


def tune_postprocess(
    model, table: pd.DataFrame, input_config: inputs.InputConfig, flip_tta: bool = False
) -> dict:
    """Chooses the pixel threshold, minimum size, ship outline and image gate on ``table``.

    Streams over the images: the network runs once per image, its components are labelled once
    per pixel threshold and outlined once per shape, and every minimum size is scored from that
    one IoU matrix (a size filter only removes predicted columns; a ship whose box lost every
    pixel to larger ones is gone as in inference). The image-level threshold, on the ship head's
    probability or (without a head) on the top pixel probability, is then found exactly for
    each setting by ``scoring.best_gate``, not from a grid. Memory grows by a few numbers
    per image. Ties keep the stricter setting (fewer false ships). With ``flip_tta`` the
    probabilities are averaged over flips, and the chosen setting keeps doing so.

    Args:
        model: The trained U-Net (Keras or TFLite).
        table: Labelled validation images (``path`` and ``rles``), never the test images.
        input_config: The training's input settings, repeated when predicting.
        flip_tta: Average each prediction over flips (3 passes an image, 3 times slower).

    Returns:
        ``{"config": PostprocessConfig, "f2": float, "tried": int, "images": int}``.
    """
    grid = list(itertools.product(THRESHOLDS, MIN_SHIP_PIXELS, SHAPES))
    f2_open = [[] for _ in grid]
    scores, f2_closed, head = [], [], False
    for predicted, truth in labelled_predictions(model, table, input_config, flip_tta):
        probabilities = predicted.probabilities
        head = predicted.ship_probability is not None
        scores.append(ship_score(predicted))
        f2_closed.append(0.0 if truth.any() else 1.0)
        for threshold in THRESHOLDS:
            components = scoring.split_ships(probabilities > threshold)
            areas = np.bincount(components.ravel())[1:]
            for shape in SHAPES:
                shaped = outlines.outline_ships(components, shape)  # label k: component k
                ious = scoring.iou_matrix(truth, shaped)
                ious = np.pad(ious, ((0, 0), (0, len(areas) - ious.shape[1])))
                drawn = np.bincount(shaped.ravel(), minlength=len(areas) + 1)[1:] > 0
                for index, setting in enumerate(grid):
                    if setting[0] == threshold and setting[2] == shape:
                        kept = drawn & (areas >= max(setting[1], 1))
                        f2_open[index].append(scoring.f2_from_ious(ious[:, kept]))
    if not scores:
        raise errors.UserError("no validation image could be read to tune the post-processing")
    gates = [scoring.best_gate(scores, opened, f2_closed) for opened in f2_open]
    # The grid runs from loose to strict: >= lets a stricter setting win a tie.
    best = max(range(len(grid)), key=lambda index: (gates[index][1], index))
    (threshold, min_size, shape), (gate, f2) = grid[best], gates[best]
    config = scoring.PostprocessConfig(
        threshold=threshold,
        image_threshold=threshold if head else max(gate, threshold),
        min_ship_pixels=min_size,
        flip_tta=flip_tta,
        ship_threshold=gate if head else 0.5,
        ship_shape=shape,
    )
    return {"config": config, "f2": f2, "tried": len(grid), "images": len(scores)}
