"""How a predicted ship is outlined: as the network drew it, or as the oriented box it fills.

The competition's labels are filled oriented rectangles, while a network's masks have rounded
ends and ragged sides, so at the metric's higher IoU thresholds (up to 0.95) a ship that was
found can still count as missed. ``shape_ships`` redraws each ship as its oriented box
(``ships.oriented_box``: the main axis of its pixels, every pixel inside). Which outline a
model gets is tuned on validation images (``postprocess.tune_postprocess``).
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon
from skimage.measure import regionprops
from skimage.segmentation import relabel_sequential

from shipseg.scoring.ships import oriented_box

# The outlines a ship may get: "mask" as predicted, "box" its filled oriented box.
SHIP_SHAPES = ("mask", "box")


def shape_ships(labels: np.ndarray, shape: str = "box") -> np.ndarray:
    """Outlines each ship of a label image as ``shape`` says (``"mask"``: unchanged).

    The labels are filled oriented rectangles, while a network's masks have rounded ends and
    ragged sides; ``"box"`` fills each ship's oriented box (its main axis, every predicted
    pixel inside), which on a ship whose mask is an inscribed ellipse lifts the IoU with the
    true rectangle from about 0.79 to 1. Ships keep their order (largest first, as
    ``split_ships`` numbers them) and are numbered 1..n again, so every label is a ship
    (see ``outline_ships`` for what happens to a ship that a larger box covers).
    """
    if shape == "mask" or not labels.any():
        return labels
    return relabel_sequential(outline_ships(labels, shape))[0]


def outline_ships(labels: np.ndarray, shape: str = "box") -> np.ndarray:
    """``shape_ships`` with every ship keeping its own label number, gaps included.

    Ships are drawn largest first and never overlap (a submission's ships must not): a smaller
    ship keeps only pixels no larger box took, and disappears if none are left. Dropping the
    smaller ships afterwards leaves the larger ones as they are, which lets the tuning try
    every minimum size on one drawing.
    """
    if shape == "mask" or not labels.any():
        return labels
    shaped = np.zeros_like(labels)
    for region in regionprops(labels):  # in label order: largest first (see split_ships)
        corners = np.array(oriented_box(region.coords)["corners"])
        rows, columns = polygon(corners[:, 0], corners[:, 1], shape=labels.shape)
        free = shaped[rows, columns] == 0
        shaped[rows[free], columns[free]] = region.label
    return shaped
