"""From probability maps to ships, and how good they are: the toolkit's pure scoring math.

Shared by the search (validation each epoch), ``train.py`` (the test split) and ``inference.py``
(post-processing and ``--labels``). Everything here scores whole images, never crops; running
the network on them is ``shipseg.predict.prediction``.

Two kinds of score, because they answer different questions:
    * Pixel Dice and IoU, summed over all pixels of a set of images: how well ship pixels are
      found. Reported over all images and over ship images only (what public write-ups quote).
    * The competition's instance F2: every ship is an object, matched to predictions at IoU
      thresholds 0.50 to 0.95. One false ship on an empty image scores that image 0, which is
      what dominates on data that is 78 % empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from shipseg.scoring import outlines

F2_THRESHOLDS = np.arange(0.5, 1.0, 0.05)
# Ship images by the area of their largest ship (pixels, [low, high)): 29 % of real ships are
# under 100 pixels, and images holding only such ships are the ones a model misses most.
SIZE_BUCKETS = {"under 100 px": (1, 100), "100-400 px": (100, 400), "400 px or more": (400, np.inf)}


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """How a probability map becomes separate ships.

    Attributes:
        threshold: Pixel probability above which a pixel is ship.
        image_threshold: An image holds ships only if its highest pixel probability reaches
            this (the cheap image-level ship/no-ship decision; false ships on empty images
            cost the most).
        min_ship_pixels: Connected components smaller than this are dropped (at the original
            image resolution).
        flip_tta: Average the predictions of the image and its left-right and up-down flips
            (3 passes, 3x slower).
        ship_threshold: For a model with a ship head, an image holds ships only if the head's
            probability also reaches this (the learnt image-level decision; ignored for a
            model without a head).
        ship_shape: ``"mask"`` keeps each ship's pixels as predicted; ``"box"`` replaces them
            by the ship's filled oriented box, the shape the labels have (see
            ``shipseg.scoring.outlines``).
    """

    threshold: float = 0.5
    image_threshold: float = 0.5
    min_ship_pixels: int = 10
    flip_tta: bool = False
    ship_threshold: float = 0.5
    ship_shape: str = "mask"

    def __post_init__(self):
        if self.ship_shape not in outlines.SHIP_SHAPES:
            raise ValueError(
                f"ship_shape must be one of {', '.join(outlines.SHIP_SHAPES)}, not {self.ship_shape!r}"
            )


DEFAULT_POSTPROCESS = PostprocessConfig()


def split_ships(mask: np.ndarray, min_ship_pixels: int = 0) -> np.ndarray:
    """Splits a binary mask into separate ships (8-connected components).

    8-connectivity keeps a thin diagonal ship, whose pixels may touch only at corners, in one
    piece; splitting it would turn one ship into several false ones.

    Args:
        mask: 2-D binary mask.
        min_ship_pixels: Components smaller than this are removed.

    Returns:
        An ``int32`` label image: 0 background, ships numbered 1..n by decreasing area.
    """
    from skimage.measure import label

    labels = label(mask > 0, connectivity=2)
    if labels.max() == 0:
        return labels.astype(np.int32)
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    order = np.argsort(-areas, kind="stable")
    order = order[areas[order] >= max(min_ship_pixels, 1)]
    relabel = np.zeros(len(areas), dtype=np.int32)
    relabel[order] = np.arange(1, len(order) + 1)
    return relabel[labels]


def image_has_ships(
    probabilities: np.ndarray, config: PostprocessConfig, ship_probability: float | None = None
) -> bool:
    """The image-level decision: may this image hold ships at all?

    Both gates must open: the top pixel probability reaches ``config.image_threshold``, and,
    for a model with a ship head (``ship_probability`` not None), the head's probability
    reaches ``config.ship_threshold``.

    Args:
        probabilities: The image's ``(h, w)`` pixel probabilities.
        config: The post-processing settings whose two gates are applied.
        ship_probability: The ship head's probability for the image; None for a model
            without a head (then only the pixel gate counts).
    """
    if probabilities.max(initial=0.0) < config.image_threshold:
        return False
    return ship_probability is None or ship_probability >= config.ship_threshold


def probabilities_to_ships(
    probabilities: np.ndarray, config: PostprocessConfig, ship_probability: float | None = None
) -> np.ndarray:
    """Turns one image's ship probability map into a label image of separate ships.

    Args:
        probabilities: 2-D array of pixel probabilities.
        config: Thresholds and the minimum ship size.
        ship_probability: The ship head's probability for the image, or None without a head.

    Returns:
        An ``int32`` label image (see ``split_ships``); all zero when the image-level decision
        says there is no ship.
    """
    if not image_has_ships(probabilities, config, ship_probability):
        return np.zeros(probabilities.shape, dtype=np.int32)
    return ungated_ships(probabilities, config)


def ungated_ships(probabilities: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """The label image of the ships in a probability map, before the image-level gate."""
    ships = split_ships(probabilities > config.threshold, config.min_ship_pixels)
    return outlines.shape_ships(ships, config.ship_shape)


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def iou_matrix(true_labels: np.ndarray, predicted_labels: np.ndarray) -> np.ndarray:
    """IoU of every true object against every predicted object.

    Args:
        true_labels: Label image, 0 background, objects 1..n.
        predicted_labels: Label image of the same shape, objects 1..m.

    Returns:
        A float array of shape ``(n, m)``.
    """
    n_true, n_pred = int(true_labels.max(initial=0)), int(predicted_labels.max(initial=0))
    # One pass over the pixels counts every (true, predicted) pair of labels.
    pairs = true_labels.astype(np.int64).ravel() * (n_pred + 1) + predicted_labels.ravel()
    counts = np.bincount(pairs, minlength=(n_true + 1) * (n_pred + 1)).reshape(
        n_true + 1, n_pred + 1
    )
    intersection = counts[1:, 1:]
    true_area, predicted_area = counts[1:, :].sum(axis=1), counts[:, 1:].sum(axis=0)
    union = true_area[:, None] + predicted_area[None, :] - intersection
    return intersection / np.maximum(union, 1)


def image_dice(true_labels: np.ndarray, predicted_labels: np.ndarray) -> float:
    """One image's pixel Dice: 1 where both are empty (nothing to find, nothing predicted)."""
    truth, predicted = true_labels > 0, predicted_labels > 0
    total = int(truth.sum()) + int(predicted.sum())
    return 1.0 if total == 0 else 2.0 * int((truth & predicted).sum()) / total


def image_f2(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    thresholds: Sequence[float] = F2_THRESHOLDS,
) -> float:
    """The competition score of one image: F2 averaged over IoU thresholds.

    At each threshold t, a true and a predicted ship match when their IoU exceeds t (ships do
    not overlap, so above 0.5 a match is one-to-one); F2 = 5 TP / (5 TP + 4 FN + FP).

    Args:
        true_labels: ``(h, w)`` integer label image of the true ships (0 is sea, one label
            per ship).
        predicted_labels: The predicted ships as a label image of the same shape.
        thresholds: The IoU thresholds averaged over (the competition's 0.5 to 0.95 by 0.05).

    Returns:
        1.0 for no true and no predicted ship; 0.0 for predictions on an empty image or no
        prediction on a ship image; otherwise the mean F2 over ``thresholds``.
    """
    return f2_from_ious(iou_matrix(true_labels, predicted_labels), thresholds)


def f2_from_ious(ious: np.ndarray, thresholds: Sequence[float] = F2_THRESHOLDS) -> float:
    """``image_f2`` from the ``(true, predicted)`` IoU matrix of one image (see ``image_f2``)."""
    n_true, n_pred = ious.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    scores = []
    for threshold in thresholds:
        matches = ious > threshold
        true_positives = int(matches.any(axis=1).sum())
        false_negatives = n_true - true_positives
        false_positives = n_pred - int(matches.any(axis=0).sum())
        scores.append(
            5 * true_positives / (5 * true_positives + 4 * false_negatives + false_positives)
        )
    return float(np.mean(scores))


@dataclasses.dataclass
class Scoreboard:
    """Accumulates whole-image scores over a set of images.

    Pixel Dice and IoU are computed from pixel counts summed over the images (micro average),
    so a few large ships cannot hide many missed small ones image by image, and an empty image
    with no prediction neither helps nor hurts them.
    """

    intersection: int = 0
    predicted_pixels: int = 0
    true_pixels: int = 0
    ship_image_intersection: int = 0
    ship_image_predicted_pixels: int = 0
    ship_image_true_pixels: int = 0
    f2_scores: list = dataclasses.field(default_factory=list)
    baseline_f2_scores: list = dataclasses.field(default_factory=list)
    ship_scores: list = dataclasses.field(default_factory=list)
    predicted_any: list = dataclasses.field(default_factory=list)
    largest_ships: list = dataclasses.field(default_factory=list)
    ship_decisions_correct: int = 0
    images: int = 0

    def add(
        self,
        true_labels: np.ndarray,
        predicted_labels: np.ndarray,
        ship_score: float | None = None,
    ) -> float:
        """Adds one image; returns its F2.

        ``ship_score`` is the image-level evidence for a ship (the ship head's probability, or
        the top pixel probability); with it the results include its ROC AUC.

        Args:
            true_labels: ``(h, w)`` integer label image of the true ships (0 is sea).
            predicted_labels: The predicted ships after the gate, a label image of that shape.
            ship_score: The image's ship evidence in [0, 1]; None leaves the ROC AUC out
                (give it for every image or for none).
        """
        truth, predicted = true_labels > 0, predicted_labels > 0
        intersection = int((truth & predicted).sum())
        self.intersection += intersection
        self.predicted_pixels += int(predicted.sum())
        self.true_pixels += int(truth.sum())
        has_ship = bool(truth.any())
        if has_ship:
            self.ship_image_intersection += intersection
            self.ship_image_predicted_pixels += int(predicted.sum())
            self.ship_image_true_pixels += int(truth.sum())
        score = image_f2(true_labels, predicted_labels)
        self.f2_scores.append(score)
        self.baseline_f2_scores.append(0.0 if has_ship else 1.0)
        self.ship_decisions_correct += int(has_ship == bool(predicted.any()))
        self.predicted_any.append(bool(predicted.any()))
        self.largest_ships.append(int(np.bincount(true_labels.ravel())[1:].max(initial=0)))
        if ship_score is not None:
            self.ship_scores.append(float(ship_score))
        self.images += 1
        return score

    def results(self) -> dict[str, float]:
        """The scores so far.

        Returns:
            ``dice`` and ``iou`` over all pixels, ``dice_ship_images`` over ship images,
            ``f2`` (mean instance F2), ``f2_ship_images`` (its mean over ship images alone),
            ``f2_no_ship_baseline`` (the F2 of predicting no ship
            anywhere on the same images), ``ship_accuracy`` (image-level ship/no-ship),
            ``ship_images_found`` (ship images with a prediction), ``empty_images_with_ships``
            (empty images with a false ship), ``ship_auc`` (ROC AUC of the image-level ship
            score, when every image had one and both kinds of image are present) and
            ``images``.
        """
        has_ship = np.array(self.baseline_f2_scores) == 0.0
        predicted = np.array(self.predicted_any, dtype=bool)

        def dice(intersection, predicted, true):
            return 2 * intersection / (predicted + true) if predicted + true else 1.0

        union = self.predicted_pixels + self.true_pixels - self.intersection
        return {
            "dice": dice(self.intersection, self.predicted_pixels, self.true_pixels),
            "dice_ship_images": dice(
                self.ship_image_intersection,
                self.ship_image_predicted_pixels,
                self.ship_image_true_pixels,
            ),
            "iou": self.intersection / union if union else 1.0,
            "f2": float(np.mean(self.f2_scores)) if self.f2_scores else float("nan"),
            "f2_ship_images": (
                float(np.mean(np.array(self.f2_scores)[has_ship]))
                if has_ship.any()
                else float("nan")
            ),
            "f2_no_ship_baseline": (
                float(np.mean(self.baseline_f2_scores)) if self.baseline_f2_scores else float("nan")
            ),
            "ship_accuracy": self.ship_decisions_correct / self.images
            if self.images
            else float("nan"),
            "ship_images_found": int((has_ship & predicted).sum()),
            "ship_images": int(has_ship.sum()),
            "empty_images_with_ships": int((~has_ship & predicted).sum()),
            "found_by_size": found_by_size(self.largest_ships, predicted),
            "ship_auc": self._ship_auc(has_ship),
            "images": self.images,
        }

    def _ship_auc(self, has_ship: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        if len(self.ship_scores) != self.images or has_ship.all() or not has_ship.any():
            return float("nan")
        return float(roc_auc_score(has_ship, self.ship_scores))


def found_by_size(largest_ships: Sequence[int], predicted: Sequence[bool]) -> dict:
    """Ship images found (any ship predicted) of all ship images, by their largest ship's area.

    Args:
        largest_ships: Per image, the area in pixels of its largest true ship (0: empty image).
        predicted: Per image, whether anything was predicted.

    Returns:
        ``{bucket: [found, ship images]}`` for each bucket of ``SIZE_BUCKETS``.
    """
    largest, predicted = np.asarray(largest_ships), np.asarray(predicted, dtype=bool)
    counts = {}
    for name, (low, high) in SIZE_BUCKETS.items():
        inside = (largest > 0) & (largest >= low) & (largest < high)
        counts[name] = [int((inside & predicted).sum()), int(inside.sum())]
    return counts


def gated_f2(
    scores: Sequence[float],
    f2_open: Sequence[float],
    f2_closed: Sequence[float],
    threshold: float,
) -> np.ndarray:
    """Each image's F2 under an image-level threshold (``best_gate``'s): open where reached.

    Args:
        scores: Per-image ship evidence.
        f2_open: Per-image F2 with the image's ships kept.
        f2_closed: Per-image F2 with nothing predicted.
        threshold: Images whose score reaches it keep their ships.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(scores >= threshold, np.asarray(f2_open), np.asarray(f2_closed))


def best_gate(
    scores: np.ndarray, f2_open: np.ndarray, f2_closed: np.ndarray
) -> tuple[float, float]:
    """The image-level threshold that maximises the mean F2, found exactly in one sort.

    An image is predicted (scores ``f2_open``) when its score reaches the threshold and left
    empty (scores ``f2_closed``: 1 for an empty image, 0 for a ship image) otherwise. Opening
    the images in order of decreasing score, the mean F2 after opening the top k is a running
    sum, so every distinct threshold is tried at the cost of a sort.

    Args:
        scores: Per-image ship evidence (the ship head's probability or the top pixel).
        f2_open: Per-image F2 when the image's ships are kept.
        f2_closed: Per-image F2 when nothing is predicted.

    Returns:
        ``(threshold, mean F2)``; the threshold lies halfway between the last opened and the
        first closed score; ties keep the stricter threshold (fewer images opened).
    """
    scores, f2_open, f2_closed = (
        np.asarray(a, dtype=np.float64) for a in (scores, f2_open, f2_closed)
    )
    if not len(scores):
        raise ValueError("best_gate needs at least one image")
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    totals = f2_closed.sum() + np.concatenate([[0.0], np.cumsum(f2_open[order] - f2_closed[order])])
    # Opening k images is a threshold only where the k-th and (k+1)-th scores differ.
    valid = np.ones(len(scores) + 1, dtype=bool)
    valid[1:-1] = ranked[:-1] > ranked[1:]
    best = int(np.flatnonzero(valid)[np.argmax(totals[valid])])
    if best == 0:
        threshold = float(ranked[0]) + 1e-6
    elif best == len(scores):
        threshold = float(ranked[-1])
    else:
        threshold = float(ranked[best - 1] + ranked[best]) / 2
    return threshold, float(totals[best] / len(scores))


def bootstrap_intervals(
    f2: Sequence[float],
    baseline: Sequence[float],
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over images for the F2, the baseline and their gap.

    The gap ``f2 - baseline`` is resampled in pairs (the same images for both), which is what
    says whether a model beats "no ship" on these images: on 108 test images a single F2 moves
    by about 0.02 from the draw of images alone.

    Args:
        f2: Each image's F2 (``Scoreboard.f2_scores``).
        baseline: Each image's F2 under "no ship anywhere", aligned with ``f2``.
        resamples: Bootstrap draws: more give steadier bounds, at their cost in time.
        confidence: The interval's coverage, in (0, 1): 0.95 gives the 2.5th and 97.5th
            percentiles.
        seed: Fixes the draws, so a report's intervals are reproducible.

    Returns:
        ``{"f2": [low, high], "f2_no_ship_baseline": [low, high], "gain": [low, high]}``.
    """
    f2, baseline = np.asarray(f2, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(f2), size=(resamples, len(f2)))
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for name, values in (("f2", f2), ("f2_no_ship_baseline", baseline), ("gain", f2 - baseline)):
        means = values[draws].mean(axis=1)
        intervals[name] = [float(v) for v in np.percentile(means, [tail, 100 - tail])]
    return intervals
