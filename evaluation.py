"""From probability maps to ships, and how good they are.

Shared by the search (validation each epoch), ``train.py`` (the test split) and ``inference.py``
(post-processing and ``--labels``). Everything here scores whole images, never crops.

Two kinds of score, because they answer different questions (see docs in the README):
    * Pixel Dice and IoU, summed over all pixels of a set of images: how well ship pixels are
      found. Reported over all images and over ship images only (what public write-ups quote).
    * The competition's instance F2: every ship is an object, matched to predictions at IoU
      thresholds 0.50 to 0.95. One false ship on an empty image scores that image 0, which is
      what dominates on data that is 78 % empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

import pipeline

F2_THRESHOLDS = np.arange(0.5, 1.0, 0.05)
# U-Nets of up to 5 levels halve the image 5 times: inputs are padded to a multiple of this.
SIZE_MULTIPLE = 32


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
    """

    threshold: float = 0.5
    image_threshold: float = 0.5
    min_ship_pixels: int = 10
    flip_tta: bool = False


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


def probabilities_to_ships(probabilities: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Turns one image's ship probability map into a label image of separate ships.

    Args:
        probabilities: 2-D array of pixel probabilities.
        config: Thresholds and the minimum ship size.

    Returns:
        An ``int32`` label image (see ``split_ships``); all zero when the image-level decision
        says there is no ship.
    """
    if probabilities.max(initial=0.0) < config.image_threshold:
        return np.zeros(probabilities.shape, dtype=np.int32)
    return split_ships(probabilities > config.threshold, config.min_ship_pixels)


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


def image_f2(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    thresholds: Sequence[float] = F2_THRESHOLDS,
) -> float:
    """The competition score of one image: F2 averaged over IoU thresholds.

    At each threshold t, a true and a predicted ship match when their IoU exceeds t (ships do
    not overlap, so above 0.5 a match is one-to-one); F2 = 5 TP / (5 TP + 4 FN + FP).

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
    ship_decisions_correct: int = 0
    images: int = 0

    def add(self, true_labels: np.ndarray, predicted_labels: np.ndarray) -> float:
        """Adds one image; returns its F2."""
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
        self.images += 1
        return score

    def results(self) -> dict[str, float]:
        """The scores so far.

        Returns:
            ``dice`` and ``iou`` over all pixels, ``dice_ship_images`` over ship images,
            ``f2`` (mean instance F2), ``f2_no_ship_baseline`` (the F2 of predicting no ship
            anywhere on the same images), ``ship_accuracy`` (image-level ship/no-ship) and
            ``images``.
        """

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
            "f2_no_ship_baseline": (
                float(np.mean(self.baseline_f2_scores)) if self.baseline_f2_scores else float("nan")
            ),
            "ship_accuracy": self.ship_decisions_correct / self.images
            if self.images
            else float("nan"),
            "images": self.images,
        }


# ---------------------------------------------------------------------------------------------
# Prediction on whole images
# ---------------------------------------------------------------------------------------------


def pad_to_multiple(images: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
    """Pads a batch ``(n, h, w, c)`` at the bottom and right to sides divisible by ``multiple``."""
    height, width = images.shape[1:3]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return images
    return np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def predict_batch(model, images: np.ndarray, flip_tta: bool = False) -> np.ndarray:
    """Ship probabilities for a batch of images of any size.

    Args:
        model: A U-Net from ``hypermodel.build_unet``.
        images: ``(n, h, w, 3)`` float RGB in 0-255.
        flip_tta: Also predict the left-right and up-down flips and average.

    Returns:
        ``(n, h, w)`` float32 probabilities.
    """
    height, width = images.shape[1:3]
    padded = pad_to_multiple(np.asarray(images, dtype=np.float32))
    probabilities = np.asarray(model.predict_on_batch(padded))[..., 0]
    if flip_tta:
        for axis in (1, 2):
            flipped = np.asarray(model.predict_on_batch(np.flip(padded, axis=axis)))[..., 0]
            probabilities += np.flip(flipped, axis=axis)
        probabilities /= 3
    return probabilities[:, :height, :width]


def predict_table(
    model,
    table: pd.DataFrame,
    input_config: pipeline.InputConfig | None = None,
    batch_size: int = 4,
    flip_tta: bool = False,
    with_images: bool = False,
) -> Iterator[tuple]:
    """Predicts whole images of a table, streaming: one image's probabilities at a time.

    In resize mode the network sees the image resized as in training and its prediction is
    scaled back to the original size, so scores are always at the original resolution.

    Args:
        model: The trained U-Net.
        table: Rows with a ``path`` column.
        input_config: The training input settings (crop or resize).
        batch_size: Images per forward pass.
        flip_tta: Flip test-time augmentation.
        with_images: Also yield the decoded image (saves reading it again for an overlay).

    Yields:
        ``(position in table, probabilities (h, w) float32)``, plus the ``(h, w, 3)`` image
        (float, 0-255; None in resize mode) when ``with_images``. Images that fail to decode
        are skipped.
    """
    import tensorflow as tf

    resized = input_config is not None and input_config.mode == "resize"
    for positions, images, shapes in pipeline.evaluation_dataset(table, input_config, batch_size):
        images = images.numpy()
        probabilities = predict_batch(model, images, flip_tta)
        for index, (position, shape) in enumerate(
            zip(positions.numpy(), shapes.numpy(), strict=True)
        ):
            height, width = int(shape[0]), int(shape[1])
            probability = probabilities[index]
            if resized:
                probability = tf.image.resize(probability[..., None], [height, width]).numpy()[
                    ..., 0
                ]
            else:
                probability = probability[:height, :width]
            if with_images:
                image = None if resized else images[index, :height, :width]
                yield int(position), probability, image
            else:
                yield int(position), probability


def true_labels_for(row: pd.Series, shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth label image of one table row (one label per ship)."""
    return pipeline.ships_to_label_image(row.rles, shape)


def evaluate_model(
    model,
    table: pd.DataFrame,
    input_config: pipeline.InputConfig | None = None,
    postprocess: PostprocessConfig = DEFAULT_POSTPROCESS,
    batch_size: int = 4,
) -> dict[str, float]:
    """Scores a model on whole images of a table (see ``Scoreboard.results``)."""
    scoreboard = Scoreboard()
    for position, probabilities in predict_table(
        model, table, input_config, batch_size, postprocess.flip_tta
    ):
        predicted = probabilities_to_ships(probabilities, postprocess)
        scoreboard.add(true_labels_for(table.iloc[position], probabilities.shape), predicted)
    return scoreboard.results()
