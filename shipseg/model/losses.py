"""Pixel losses and overlap metrics of the U-Net, registered with Keras.

Registered under the package ``ships``, so that a saved ``.keras`` model reloads in a fresh
process after ``import hypermodel`` (which imports this module), without ``custom_objects``.
"""

from __future__ import annotations

import keras
from keras import ops

SERIALIZATION_PACKAGE = "ships"


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over pixels."""
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
def focal_loss(y_true, y_pred, gamma: float = 2.0):
    """Binary focal loss averaged over pixels: BCE scaled by ``(1 - p_true) ** gamma``.

    Easy background pixels (the vast majority) contribute almost nothing, so the rare ship
    pixels and hard sea clutter drive the gradient.

    Args:
        y_true: The true masks, 1 for ship pixels and 0 for sea.
        y_pred: The predicted ship probabilities, the shape of ``y_true``.
        gamma: The focusing exponent: 0 is plain BCE; higher values down-weight easy pixels
            more (2 is the focal-loss paper's choice).
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    y_pred = ops.clip(y_pred, keras.backend.epsilon(), 1 - keras.backend.epsilon())
    p_true = y_true * y_pred + (1 - y_true) * (1 - y_pred)
    return ops.mean(-((1 - p_true) ** gamma) * ops.log(p_true))


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
def dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice loss over the whole batch: ``1 - (2 |Y P| + s) / (|Y| + |P| + s)``.

    Summed over the batch rather than per image, so crops without ships do not make the loss
    undefined or dominate it.

    Args:
        y_true: The true masks, 1 for ship pixels and 0 for sea.
        y_pred: The predicted ship probabilities, the shape of ``y_true``.
        smooth: ``s``, added to both sides: keeps the loss defined (0) for a batch with no
            ship pixel and nothing predicted, and softens it for tiny masks.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred)
    return 1 - (2 * intersection + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


PIXEL_LOSSES = {"bce": bce_loss, "focal": focal_loss}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class WeightedLoss(keras.losses.Loss):
    """``w * pixel_loss + (1 - w) * dice_loss``, the pixel loss being BCE or focal.

    Args:
        pixel_loss: ``"bce"`` or ``"focal"``.
        pixel_weight: ``w`` in [0, 1]; 1 is the pixel loss alone, 0 is Dice alone.
        name: The loss's name in logs and saved configs; None: ``"<w>_<pixel_loss>_dice"``.
    """

    def __init__(
        self, pixel_loss: str = "bce", pixel_weight: float = 0.5, name: str | None = None, **kwargs
    ):
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(
                f"pixel_loss must be one of {sorted(PIXEL_LOSSES)}, got {pixel_loss!r}"
            )
        if not 0 <= pixel_weight <= 1:
            raise ValueError(f"pixel_weight must be in [0, 1], got {pixel_weight}")
        super().__init__(name=name or f"{pixel_weight:g}_{pixel_loss}_dice", **kwargs)
        self.pixel_loss = pixel_loss
        self.pixel_weight = float(pixel_weight)

    def call(self, y_true, y_pred):  # noqa: D102
        pixel = PIXEL_LOSSES[self.pixel_loss](y_true, y_pred)
        return self.pixel_weight * pixel + (1 - self.pixel_weight) * dice_loss(y_true, y_pred)

    def get_config(self):  # noqa: D102
        return {
            **super().get_config(),
            "pixel_loss": self.pixel_loss,
            "pixel_weight": self.pixel_weight,
        }


class _OverlapMetric(keras.metrics.Metric):
    """Accumulates intersection and pixel sums of thresholded predictions over an epoch."""

    def __init__(self, threshold: float = 0.5, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):  # noqa: D102
        y_true = ops.cast(y_true > 0.5, "float32")
        y_pred = ops.cast(y_pred > self.threshold, "float32")
        self.intersection.assign_add(ops.sum(y_true * y_pred))
        self.total.assign_add(ops.sum(y_true) + ops.sum(y_pred))

    def reset_state(self):  # noqa: D102
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):  # noqa: D102
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class DiceScore(_OverlapMetric):
    """Pixel Dice of predictions thresholded at ``threshold``, over all pixels seen (1 if none)."""

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs):
        super().__init__(threshold, name=name, **kwargs)

    def result(self):  # noqa: D102
        return ops.where(self.total > 0, 2 * self.intersection / ops.maximum(self.total, 1.0), 1.0)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class IoUScore(_OverlapMetric):
    """Pixel IoU of predictions thresholded at ``threshold``, over all pixels seen (1 if none)."""

    def __init__(self, threshold: float = 0.5, name: str = "iou", **kwargs):
        super().__init__(threshold, name=name, **kwargs)

    def result(self):  # noqa: D102
        union = self.total - self.intersection
        return ops.where(union > 0, self.intersection / ops.maximum(union, 1.0), 1.0)
