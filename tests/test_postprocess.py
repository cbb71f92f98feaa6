"""Post-processing tuning (shipseg.predict.postprocess) against brute force."""

import itertools

import numpy as np
import pytest

from shipseg.predict import postprocess, prediction
from shipseg.scoring import metrics as scoring
from shipseg.scoring import outlines


class BrightnessModel:
    """A stand-in U-Net: the probability of a pixel is its brightness, slightly blurred."""

    def predict_on_batch(self, images):
        brightness = images.mean(axis=-1, keepdims=True) / 255.0
        padded = np.pad(brightness, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        blurred = (
            sum(
                padded[:, dy : dy + images.shape[1], dx : dx + images.shape[2]]
                for dy in range(3)
                for dx in range(3)
            )
            / 9
        )
        return np.clip(blurred * 1.4 - 0.1, 0, 1)


def test_tuned_post_processing_is_the_best_of_the_grid(synthetic_table):
    table = synthetic_table.head(24)
    tuned = postprocess.tune_postprocess(BrightnessModel(), table, None)
    assert tuned["images"] == 24
    best_brute_force = -1.0
    image_thresholds = np.linspace(0.3, 1.0, 15)
    for threshold, image_threshold, min_size, shape in itertools.product(
        postprocess.THRESHOLDS,
        image_thresholds,
        postprocess.MIN_SHIP_PIXELS,
        outlines.SHIP_SHAPES,
    ):
        config = scoring.PostprocessConfig(
            threshold, max(image_threshold, threshold), min_size, ship_shape=shape
        )
        score = prediction.evaluate_model(BrightnessModel(), table, None, config)["f2"]
        best_brute_force = max(best_brute_force, score)
    # The exact sweep finds every threshold a grid can, and those between its points.
    assert tuned["f2"] >= best_brute_force - 1e-9
    chosen = prediction.evaluate_model(BrightnessModel(), table, None, tuned["config"])["f2"]
    assert chosen == pytest.approx(tuned["f2"])


class RingModel:
    """Predicts a ring with a speck in its hole on every image: a box swallows the speck."""

    def predict_on_batch(self, images):
        from test_scoring import ring_with_a_speck

        ring = ring_with_a_speck(images.shape[1]).astype(np.float32)[None, :, :, None]
        return np.repeat(ring * 0.9, len(images), axis=0)


def test_tuning_scores_a_ship_swallowed_by_a_larger_box_as_inference_does(synthetic_table):
    table = synthetic_table.head(6)
    tuned = postprocess.tune_postprocess(RingModel(), table, None)
    chosen = prediction.evaluate_model(RingModel(), table, None, tuned["config"])["f2"]
    assert chosen == pytest.approx(tuned["f2"])
    for shape in outlines.SHIP_SHAPES:
        config = scoring.PostprocessConfig(0.5, 0.5, 0, ship_shape=shape)
        labels = scoring.probabilities_to_ships(ring_with_a_speck_probabilities(), config)
        assert labels.max() == len(np.unique(labels)) - 1  # every label is a ship


def ring_with_a_speck_probabilities():
    from test_scoring import ring_with_a_speck

    return ring_with_a_speck().astype(np.float32) * 0.9
