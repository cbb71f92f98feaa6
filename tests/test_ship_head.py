"""The learnt image-level ship decision: the head, its targets, the gate, and inference."""

import json
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import hypermodel
import pipeline
from conftest import ROOT, run
from shipseg.predict import prediction
from shipseg.scoring import metrics as scoring
from shipseg.train import hypermodel as unet_hypermodel


@pytest.fixture(scope="module")
def headed_model(tmp_path_factory):
    """A saved 2-level U-Net with a ship head, and the folder holding it."""
    keras.utils.set_random_seed(0)
    model = hypermodel.build_unet(2, 4, ship_head=True)
    hypermodel.compile_unet(model, 1e-3, "bce", 0.5, ship_loss_weight=0.5)
    folder = tmp_path_factory.mktemp("headed")
    model.save(folder / "model.keras")
    return folder


def test_a_ship_head_model_predicts_each_images_ship_probability_after_reloading(headed_model):
    model = keras.saving.load_model(headed_model / "model.keras")
    assert hypermodel.has_ship_head(model)
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 56, 3)).astype(np.float32)
    probabilities, ship = prediction.predict_batch(model, images)
    assert probabilities.shape == (3, 40, 56) and ship.shape == (3,)
    assert ((ship > 0) & (ship < 1)).all()
    direct = model.predict_on_batch(prediction.pad_to_multiple(images))["has_ship"][:, 0]
    np.testing.assert_allclose(ship, direct, rtol=1e-5)


def test_a_model_without_the_weight_has_no_head():
    hp = hypermodel.fixed_hyperparameters(
        {**{d.name: d.values[0] for d in hypermodel.DEFAULT_SPACE}, "levels": 2, "base_filters": 4}
    )
    builder = hypermodel.ShipUNetHyperModel(hypermodel.search_space(["levels=2", "base_filters=4"]))
    assert not hypermodel.has_ship_head(builder.build(hp))  # ship_loss_weight 0
    hp.values["ship_loss_weight"] = 0.25
    assert hypermodel.has_ship_head(builder.build(hp))


def test_the_head_learns_whether_the_crop_holds_a_ship_pixel():
    masks = np.zeros((2, 8, 8, 1), np.float32)
    masks[0, 3, 4] = 1
    _, targets = unet_hypermodel._with_ship_targets(np.zeros((2, 8, 8, 3), np.float32), masks)
    np.testing.assert_array_equal(targets["has_ship"].numpy(), [[1.0], [0.0]])
    np.testing.assert_array_equal(targets["ship_probability"], masks)


def test_the_ship_gate_empties_an_image_the_head_doubts():
    probabilities = np.zeros((20, 20), np.float32)
    probabilities[5:9, 5:12] = 0.9
    config = scoring.PostprocessConfig(0.5, 0.5, 0, ship_threshold=0.7)
    assert scoring.probabilities_to_ships(probabilities, config, 0.69).max() == 0
    assert scoring.probabilities_to_ships(probabilities, config, 0.7).max() == 1
    # A model without a head: only the pixel gate decides.
    assert scoring.probabilities_to_ships(probabilities, config, None).max() == 1


def inference(folder, images, out, *flags):
    command = [sys.executable, str(ROOT / "inference.py"), str(images), "--model"]
    return run([*command, str(folder / "model.keras"), "--out", str(out), *flags])


@pytest.mark.slow
def test_inference_obeys_the_tuned_ship_gate_and_writes_each_images_probability(
    headed_model, synthetic_dataset, tmp_path
):
    model = keras.saving.load_model(headed_model / "model.keras")
    images = sorted((synthetic_dataset / "test_v2").glob("*.jpg"))
    expected = {}
    for path in images:
        image = pipeline.decode_image(str(path)).numpy()[None]
        expected[path.name] = float(prediction.predict_batch(model, image)[1][0])
    # Every pixel is a ship at threshold 0: only the gate can leave an image empty.
    middle = float(np.median(list(expected.values())))
    config = {"status": "complete", "input": {"mode": "crop", "size": 32}}
    config["postprocess"] = {"threshold": 0.0, "image_threshold": 0.0, "min_ship_pixels": 0}
    config["postprocess"]["ship_threshold"] = middle
    (headed_model / "config.json").write_text(json.dumps(config))
    result = inference(headed_model, synthetic_dataset / "test_v2", tmp_path / "tuned")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tuned" / "images.csv").set_index("ImageId")
    assert list(table.columns) == ["ship_probability", "top_pixel_probability", "ships"]
    for name, probability in expected.items():
        assert table.ship_probability[name] == pytest.approx(probability, abs=1e-4)
        assert (table.ships[name] > 0) == (probability >= middle), name
    submission = pd.read_csv(tmp_path / "tuned" / "submission.csv", keep_default_na=False)
    opened = set(submission.ImageId[submission.EncodedPixels != ""])
    assert opened == {name for name, p in expected.items() if p >= middle}
    # A flag overrides the tuned threshold: 0 opens every image.
    result = inference(
        headed_model, synthetic_dataset / "test_v2", tmp_path / "open", "--ship-threshold", "0"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (pd.read_csv(tmp_path / "open" / "images.csv").ships > 0).all()
