"""The competition metric, scoring, the image-level gate and bootstrap intervals (shipseg/scoring/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipseg.predict import prediction
from shipseg.scoring import metrics as scoring
from shipseg.scoring import outlines
from shipseg.scoring.metrics import PostprocessConfig, Scoreboard, image_f2, iou_matrix

# Probabilities for property tests of the image-level gate.
probabilities = st.floats(0, 1, allow_nan=False)


def box(shape, top, left, height, width, label=1, into=None):
    labels = np.zeros(shape, dtype=np.int32) if into is None else into
    labels[top : top + height, left : left + width] = label
    return labels


def test_empty_image_with_no_prediction_scores_one():
    empty = np.zeros((32, 32), np.int32)
    assert image_f2(empty, empty) == 1.0


def test_any_prediction_on_an_empty_image_scores_zero():
    empty = np.zeros((32, 32), np.int32)
    assert image_f2(empty, box((32, 32), 3, 3, 2, 2)) == 0.0


def test_missing_every_ship_scores_zero():
    truth = box((32, 32), 3, 3, 4, 4)
    assert image_f2(truth, np.zeros_like(truth)) == 0.0


def test_perfect_prediction_scores_one():
    truth = box((32, 32), 3, 3, 4, 4)
    box((32, 32), 20, 20, 5, 3, label=2, into=truth)
    assert image_f2(truth, truth.copy()) == 1.0


def test_two_ships_one_found_exactly():
    truth = box((32, 32), 3, 3, 4, 4)
    box((32, 32), 20, 20, 5, 3, label=2, into=truth)
    predicted = box((32, 32), 3, 3, 4, 4)
    # TP 1, FN 1, FP 0 at every threshold: 5 / (5 + 4).
    assert image_f2(truth, predicted) == pytest.approx(5 / 9)


def test_one_ship_and_one_false_ship():
    truth = box((32, 32), 3, 3, 4, 4)
    predicted = box((32, 32), 3, 3, 4, 4)
    box((32, 32), 20, 20, 2, 2, label=2, into=predicted)
    # TP 1, FN 0, FP 1: 5 / 6.
    assert image_f2(truth, predicted) == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    ("predicted_width", "expected_thresholds_passed"),
    [
        # Truth is 10 x 10 = 100 pixels; a 10 x w prediction inside it has IoU w / 10.
        (6, 2),  # IoU 0.60: above 0.50 and 0.55, not above 0.60 (strictly greater is required)
        (7, 4),  # IoU 0.70: above 0.50 .. 0.65
        (5, 0),  # IoU 0.50 exactly: not above 0.50
        (10, 10),
    ],
)
def test_iou_just_under_and_over_thresholds(predicted_width, expected_thresholds_passed):
    truth = box((20, 20), 0, 0, 10, 10)
    predicted = box((20, 20), 0, 0, 10, predicted_width)
    # Each threshold passed scores 1 (TP), each failed one scores 0 (FN 1 and FP 1 -> 0).
    assert image_f2(truth, predicted) == pytest.approx(expected_thresholds_passed / 10)


def test_iou_matrix_pairs_every_object():
    truth = box((10, 10), 0, 0, 2, 2)
    box((10, 10), 5, 5, 2, 2, label=2, into=truth)
    predicted = box((10, 10), 0, 0, 2, 4)
    ious = iou_matrix(truth, predicted)
    assert ious.shape == (2, 1)
    assert ious[0, 0] == pytest.approx(0.5)
    assert ious[1, 0] == 0.0


def test_split_ships_separates_components_and_drops_small_ones():
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[10:12, 10:18] = True  # 16 pixels
    mask[18, 18] = True  # 1 pixel
    labels = scoring.split_ships(mask, min_ship_pixels=5)
    assert labels.max() == 2
    assert (labels == 1).sum() == 16  # numbered by decreasing area
    assert labels[18, 18] == 0
    # A thin diagonal ship touches itself only at corners: it stays one ship.
    assert scoring.split_ships(np.eye(6, dtype=bool)).max() == 1


def test_image_level_decision_suppresses_weak_images():
    probabilities = np.full((16, 16), 0.1, np.float32)
    probabilities[4:8, 4:8] = 0.7
    config = PostprocessConfig(threshold=0.5, image_threshold=0.8, min_ship_pixels=0)
    assert scoring.probabilities_to_ships(probabilities, config).max() == 0
    config = PostprocessConfig(threshold=0.5, image_threshold=0.6, min_ship_pixels=0)
    assert scoring.probabilities_to_ships(probabilities, config).max() == 1


def test_scoreboard_pixel_scores_and_baseline():
    board = Scoreboard()
    truth = box((10, 10), 0, 0, 2, 5)  # 10 pixels
    predicted = box((10, 10), 0, 0, 2, 3)  # 6 pixels inside
    board.add(truth, predicted)
    empty = np.zeros((10, 10), np.int32)
    board.add(empty, empty)
    board.add(empty, box((10, 10), 8, 8, 1, 1))  # a false ship on an empty image
    results = board.results()
    assert results["dice"] == pytest.approx(2 * 6 / (10 + 7))
    assert results["dice_ship_images"] == pytest.approx(2 * 6 / (10 + 6))
    assert results["iou"] == pytest.approx(6 / 11)
    assert results["f2_no_ship_baseline"] == pytest.approx(2 / 3)
    assert results["ship_accuracy"] == pytest.approx(2 / 3)
    assert results["images"] == 3
    # IoU 0.6 passes 2 thresholds: 0.2; then 1 and 0.
    assert results["f2"] == pytest.approx((0.2 + 1 + 0) / 3)


def test_pad_to_multiple_and_predict_batch_keep_size():
    class Echo:
        def predict_on_batch(self, images):
            assert images.shape[1] % 32 == 0 and images.shape[2] % 32 == 0
            return images[..., :1] / 255.0

    images = np.random.default_rng(0).uniform(0, 255, (2, 50, 70, 3)).astype(np.float32)
    probabilities, ship = prediction.predict_batch(Echo(), images)
    assert probabilities.shape == (2, 50, 70) and ship is None
    np.testing.assert_allclose(probabilities, images[..., 0] / 255.0, rtol=1e-6)
    # Flip TTA of a flip-equivariant model changes nothing.
    np.testing.assert_allclose(
        prediction.predict_batch(Echo(), images, flip_tta=True)[0], probabilities, rtol=1e-5
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(probabilities, probabilities, st.booleans()), min_size=1, max_size=30))
def test_best_gate_matches_every_threshold_tried_by_brute_force(images):
    scores = np.array([score for score, _, _ in images])
    f2_open = np.array([f2 for _, f2, _ in images])
    f2_closed = np.array([1.0 if empty else 0.0 for _, _, empty in images])
    threshold, best = scoring.best_gate(scores, f2_open, f2_closed)

    def mean_f2(t):
        return np.where(scores >= t, f2_open, f2_closed).mean()

    candidates = [*np.unique(scores), scores.max() + 1]
    assert best == pytest.approx(max(mean_f2(t) for t in candidates))
    # The returned threshold really scores what it claims.
    assert mean_f2(threshold) == pytest.approx(best)


def test_best_gate_keeps_the_stricter_threshold_on_a_tie():
    # Opening the only image gains nothing: the gate stays shut.
    threshold, best = scoring.best_gate([0.9], [1.0], [1.0])
    assert threshold > 0.9 and best == 1.0


def test_best_gate_opens_only_the_images_whose_ships_pay():
    scores = [0.95, 0.9, 0.3, 0.2]
    f2_open = [0.8, 0.6, 0.0, 0.0]  # two ship images found, two empty images with false ships
    f2_closed = [0.0, 0.0, 1.0, 1.0]
    threshold, best = scoring.best_gate(scores, f2_open, f2_closed)
    assert 0.3 < threshold <= 0.9
    assert best == pytest.approx((0.8 + 0.6 + 1 + 1) / 4)


def test_bootstrap_intervals_contain_the_estimates_and_narrow_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for images in (50, 800):
        baseline = (rng.uniform(size=images) < 0.75).astype(float)
        f2 = np.where(baseline == 1, (rng.uniform(size=images) < 0.95), rng.uniform(size=images))
        intervals = scoring.bootstrap_intervals(f2, baseline, resamples=2000)
        for name, values in (
            ("f2", f2),
            ("f2_no_ship_baseline", baseline),
            ("gain", f2 - baseline),
        ):
            low, high = intervals[name]
            assert low <= values.mean() <= high, name
        widths.append(intervals["gain"][1] - intervals["gain"][0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_of_a_model_equal_to_the_baseline_has_a_zero_gain_interval():
    baseline = np.array([1.0, 0.0, 1.0, 1.0])
    intervals = scoring.bootstrap_intervals(baseline, baseline)
    assert intervals["gain"] == [0.0, 0.0]
    assert intervals == scoring.bootstrap_intervals(baseline, baseline)


def ellipse(shape, centre, half_length, half_width, angle_degrees, label=1, into=None):
    """A filled ellipse: a network's mask of a ship, its ends rounded."""
    from skimage.draw import ellipse as draw_ellipse

    labels = np.zeros(shape, dtype=np.int32) if into is None else into
    rows, columns = draw_ellipse(
        *centre, half_length, half_width, shape=shape, rotation=np.radians(angle_degrees)
    )
    labels[rows, columns] = label
    return labels


@pytest.mark.parametrize("angle", [0, 30, 45, 90, 125])
def test_box_shaping_covers_every_predicted_pixel_and_fills_the_rounded_ends(angle):
    mask = ellipse((96, 96), (48, 48), 30, 8, angle)
    shaped = outlines.shape_ships(mask, "box")
    assert (shaped[mask > 0] == 1).all()
    # An ellipse fills pi / 4 of its box.
    assert shaped.sum() / mask.sum() == pytest.approx(4 / np.pi, rel=0.12)


def test_box_shaping_lifts_the_iou_of_a_rounded_mask_with_its_true_rectangle():
    truth = box((64, 64), 20, 10, 8, 40)
    rounded = ellipse((64, 64), (23.5, 29.5), 4, 20, 0)
    boxed = outlines.shape_ships(rounded, "box")
    assert iou_matrix(truth, rounded)[0, 0] < 0.85
    assert iou_matrix(truth, boxed)[0, 0] > 0.95


def test_box_shaping_keeps_labels_and_never_overlaps_ships():
    labels = scoring.split_ships(
        (ellipse((64, 64), (30, 30), 20, 4, 45) + ellipse((64, 64), (36, 24), 6, 3, 135)) > 0
    )
    shaped = outlines.shape_ships(labels, "box")
    # Each pixel has one label; the larger ship's box is drawn first and stays whole.
    first = outlines.shape_ships((labels == 1).astype(np.int32), "box")
    assert ((shaped == 1) == (first == 1)).all()
    assert set(np.unique(shaped)) <= {0, 1, 2}


def test_mask_shape_leaves_ships_as_predicted():
    labels = scoring.split_ships(ellipse((64, 64), (30, 30), 20, 4, 45))
    assert (outlines.shape_ships(labels, "mask") == labels).all()


def test_an_unknown_ship_shape_is_refused_by_name():
    with pytest.raises(ValueError, match="ship_shape must be one of mask, box"):
        PostprocessConfig(ship_shape="circle")


def test_scoreboard_counts_ship_images_found_by_their_largest_ship():
    scoreboard = Scoreboard()
    small, large = box((64, 64), 2, 2, 5, 5), box((64, 64), 2, 2, 30, 20)
    scoreboard.add(small, small)  # 25 px, found
    scoreboard.add(large, np.zeros_like(large))  # 600 px, missed
    scoreboard.add(large, large)  # 600 px, found
    scoreboard.add(np.zeros_like(small), small)  # empty image: not counted
    assert scoreboard.results()["found_by_size"] == {
        "under 100 px": [1, 1],
        "100-400 px": [0, 0],
        "400 px or more": [1, 2],
    }
    assert scoreboard.results()["f2_ship_images"] == pytest.approx(2 / 3)


def ring_with_a_speck(size: int = 64) -> np.ndarray:
    """A hollow ship-like ring with a speck in its hole: the ring's box covers the speck."""
    from skimage.draw import disk

    mask = np.zeros((size, size), bool)
    mask[disk((size // 2, size // 2), size // 3)] = True
    mask[disk((size // 2, size // 2), size // 6)] = False
    mask[size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = True
    return mask


def test_a_ship_inside_a_larger_box_disappears_and_the_rest_are_numbered_1_to_n():
    labels = scoring.split_ships(ring_with_a_speck())
    assert labels.max() == 2
    kept = outlines.outline_ships(labels, "box")
    assert set(np.unique(kept)) == {0, 1}  # the speck lost every pixel to the ring's box
    assert set(np.unique(outlines.shape_ships(labels, "box"))) == {0, 1}
