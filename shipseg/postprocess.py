"""Choosing the post-processing on validation images: pixel threshold, minimum size, gate.

The network gives probabilities; what is scored and submitted are ships. Between them sit a
pixel threshold, a minimum ship size and the image-level gate (the ship head's probability, or
the top pixel's). ``tune_postprocess`` chooses all three on the validation images for the F2.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

import evaluation
import pipeline
from shipseg import cli

# The post-processing grid tried on validation images (the image-level threshold is found
# exactly for each setting); the best F2 becomes inference's default.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


MIN_SHIP_PIXELS = (0, 10, 30, 100)


def tune_postprocess(
    model, table: pd.DataFrame, input_config: pipeline.InputConfig, flip_tta: bool = False
) -> dict:
    """Chooses the pixel threshold, minimum ship size and image-level threshold on ``table``.

    Streams over the images: the network runs once per image, its components are labelled once
    per pixel threshold, and every minimum size is scored from that one IoU matrix (a size
    filter only removes predicted columns). The image-level threshold, on the ship head's
    probability or (without a head) on the top pixel probability, is then found exactly for
    each setting by ``evaluation.best_gate``, not from a grid. Memory grows by a few numbers
    per image. Ties keep the stricter setting (fewer false ships). With ``flip_tta`` the
    probabilities are averaged over flips, and the chosen setting keeps doing so.

    Returns:
        ``{"config": PostprocessConfig, "f2": float, "tried": int, "images": int}``.
    """
    grid = list(itertools.product(THRESHOLDS, MIN_SHIP_PIXELS))
    f2_open = [[] for _ in grid]
    scores, f2_closed, head = [], [], False
    for prediction, truth in evaluation.labelled_predictions(model, table, input_config, flip_tta):
        probabilities = prediction.probabilities
        head = prediction.ship_probability is not None
        scores.append(evaluation.ship_score(prediction))
        f2_closed.append(0.0 if truth.any() else 1.0)
        for threshold in THRESHOLDS:
            components = evaluation.split_ships(probabilities > threshold)
            areas = np.bincount(components.ravel())[1:]
            ious = evaluation.iou_matrix(truth, components)
            for index, (pixel_threshold, min_size) in enumerate(grid):
                if pixel_threshold == threshold:
                    f2_open[index].append(
                        evaluation.f2_from_ious(ious[:, areas >= max(min_size, 1)])
                    )
    if not scores:
        raise cli.UserError("no validation image could be read to tune the post-processing")
    gates = [evaluation.best_gate(scores, opened, f2_closed) for opened in f2_open]
    # The grid runs from loose to strict: >= lets a stricter setting win a tie.
    best = max(range(len(grid)), key=lambda index: (gates[index][1], index))
    (threshold, min_size), (gate, f2) = grid[best], gates[best]
    if head:
        config = evaluation.PostprocessConfig(threshold, threshold, min_size, flip_tta, gate)
    else:
        config = evaluation.PostprocessConfig(threshold, max(gate, threshold), min_size, flip_tta)
    return {"config": config, "f2": f2, "tried": len(grid), "images": len(scores)}
