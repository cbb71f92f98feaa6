"""Pixel losses and overlap metrics (shipseg.model.losses) on known cases."""

from __future__ import annotations

import numpy as np
import pytest

from shipseg.model import losses


def test_loss_weighting_changes_the_loss():
    y_true, y_pred = masks()
    bce = float(losses.bce_loss(y_true, y_pred))
    dice = float(losses.dice_loss(y_true, y_pred))
    assert bce != pytest.approx(dice)
    for weight in (0.0, 0.25, 1.0):
        loss = losses.WeightedLoss("bce", weight)
        assert float(loss(y_true, y_pred)) == pytest.approx(
            weight * bce + (1 - weight) * dice, rel=1e-5
        )
    focal = float(losses.focal_loss(y_true, y_pred))
    assert float(losses.WeightedLoss("focal", 1.0)(y_true, y_pred)) == pytest.approx(
        focal, rel=1e-5
    )


def test_focal_loss_down_weights_easy_pixels():
    y_true = np.zeros((1, 4, 4, 1), np.float32)
    easy = np.full((1, 4, 4, 1), 0.05, np.float32)
    hard = np.full((1, 4, 4, 1), 0.6, np.float32)
    assert float(losses.focal_loss(y_true, easy)) < 0.01 * float(losses.bce_loss(y_true, easy))
    ratio_hard = float(losses.focal_loss(y_true, hard)) / float(losses.bce_loss(y_true, hard))
    assert ratio_hard == pytest.approx(0.6**2, rel=1e-3)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_one_for_disjoint():
    y_true = np.zeros((1, 8, 8, 1), np.float32)
    y_true[0, :4] = 1
    assert float(losses.dice_loss(y_true, y_true)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.dice_loss(y_true, 1 - y_true)) == pytest.approx(1.0, abs=0.05)


def test_weighted_loss_rejects_bad_settings():
    with pytest.raises(ValueError, match="pixel_loss"):
        losses.WeightedLoss("hinge", 0.5)
    with pytest.raises(ValueError, match="pixel_weight"):
        losses.WeightedLoss("bce", 1.5)


def test_dice_and_iou_metrics_on_a_known_case():
    y_true = np.zeros((1, 4, 4, 1), np.float32)
    y_true[0, 0, :4] = 1  # 4 pixels
    y_pred = np.zeros((1, 4, 4, 1), np.float32)
    y_pred[0, 0, :2] = 0.9  # 2 pixels right
    y_pred[0, 3, 0] = 0.8  # 1 pixel wrong
    y_pred[0, 2, 0] = 0.4  # under the threshold
    dice, iou = losses.DiceScore(), losses.IoUScore()
    dice.update_state(y_true, y_pred)
    iou.update_state(y_true, y_pred)
    assert float(dice.result()) == pytest.approx(2 * 2 / (4 + 3))
    assert float(iou.result()) == pytest.approx(2 / 5)


def masks():
    rng = np.random.default_rng(1)
    y_true = (rng.random((2, 16, 16, 1)) < 0.1).astype(np.float32)
    y_pred = np.clip(y_true * 0.6 + rng.random((2, 16, 16, 1)) * 0.4, 0.01, 0.99).astype(np.float32)
    return y_true, y_pred
