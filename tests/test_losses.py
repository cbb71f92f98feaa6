"""Pixel losses and overlap metrics (shipseg.model.losses) on known cases."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from shipseg.model import losses
from shipseg.model.unet import build_unet, compile_unet

# Every pixel loss the search may choose: an entry added to the table is tested here at once.
PIXEL_LOSSES = list(losses.PIXEL_LOSSES)


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


def tiny_batch(size: int = 32):
    """Two random RGB images in 0-255 and their masks (a ship block in the first only)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    masks = np.zeros((2, size, size, 1), np.float32)
    masks[0, 8:14, 4:24] = 1
    return images, masks


def tiny_unet(pixel_loss: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_unet(2, 4)
    compile_unet(model, 1e-3, pixel_loss=pixel_loss, pixel_weight=0.5)
    return model


@pytest.mark.parametrize("name", PIXEL_LOSSES)
def test_each_pixel_loss_is_a_finite_non_negative_scalar_on_random_masks(name):
    y_true, y_pred = masks()
    value = losses.PIXEL_LOSSES[name](y_true, y_pred)
    assert keras.ops.shape(value) == ()
    assert np.isfinite(float(value)) and float(value) >= 0


@pytest.mark.parametrize("name", PIXEL_LOSSES)
def test_each_pixel_loss_is_near_zero_when_right_and_grows_as_the_prediction_goes_wrong(name):
    loss = losses.PIXEL_LOSSES[name]
    y_true, noisy = masks()
    perfect = float(loss(y_true, y_true))
    unsure = float(loss(y_true, np.full_like(y_true, 0.5)))
    wrong = float(loss(y_true, 1 - y_true))
    assert perfect == pytest.approx(0.0, abs=1e-3)
    assert perfect < float(loss(y_true, noisy)) < wrong
    assert perfect < unsure < wrong


@pytest.mark.parametrize("name", PIXEL_LOSSES)
def test_a_unet_compiled_with_each_pixel_loss_trains_a_step_and_reloads_with_that_loss(
    name, tmp_path
):
    model = tiny_unet(name)
    images, truth = tiny_batch()
    history = model.fit(images, truth, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, losses.WeightedLoss)
    assert (loaded.loss.pixel_loss, loaded.loss.pixel_weight) == (name, 0.5)
    before = model.evaluate(images, truth, verbose=0, return_dict=True)["loss"]
    after = loaded.evaluate(images, truth, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(after) and after == pytest.approx(before, rel=1e-5)
