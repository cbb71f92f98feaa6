"""``export.py``: the SavedModel and TFLite exports, their parity, and inference from TFLite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipeline
from conftest import ROOT, inference_command, run
from shipseg.model import exporting, loading
from shipseg.predict import prediction

# Inference with thresholds that keep whatever the barely trained tiny model sees.
LOOSE = ["--threshold", "0.005", "--image-threshold", "0", "--ship-threshold", "0"]


@pytest.fixture(scope="module")
def exported(trained_project, tmp_path_factory):
    project, _ = trained_project
    out = tmp_path_factory.mktemp("export") / "export"
    command = [sys.executable, str(ROOT / "export.py"), "--results-dir", str(project.parent)]
    options = ["--image-size", "64", "--quantized", "--evaluate", "--latency-runs", "3"]
    result = run([*command, "--out", str(out), *options])
    assert result.returncode == 0, result.stderr[-3000:]
    return project, out, result


def test_export_writes_a_saved_model_a_tflite_file_and_the_training_settings(exported):
    project, out, result = exported
    assert (out / exporting.SAVED_MODEL / "saved_model.pb").is_file()
    assert (out / exporting.TFLITE).stat().st_size > 0
    record = json.loads((out / exporting.EXPORT_JSON).read_text())
    config = json.loads((project / "final" / "config.json").read_text())
    assert record["postprocess"] == config["postprocess"]
    assert record["input"] == config["input"] and record["status"] == "complete"
    assert record["image_size"] == [64, 64] and set(record["outputs"]) >= {"ship_probability"}
    assert max(record["parity_max_abs_difference"].values()) <= 1e-4
    assert "largest difference from the .keras model" in result.stdout
    assert not out.with_name("export.partial").exists()


def test_export_times_every_format_and_scores_each_on_the_test_split(exported):
    project, out, result = exported
    record = json.loads((out / exporting.EXPORT_JSON).read_text())
    formats = ["keras", "saved_model", "tflite", "tflite_float16", "tflite_dynamic_range"]
    assert sorted(record["timings"]) == sorted(formats)
    for name, timed in record["timings"].items():
        assert timed["format"] == name and timed["image_size"] == 64 and timed["runs"] == 3
        assert 0 < timed["median_ms"] <= timed["p95_ms"] and timed["file_mib"] > 0
        assert f"| {name} | " in result.stdout
    split = pd.read_csv(project / "split.csv")
    tested = int((split.split == "test").sum())
    scores = record["test_scores"]
    assert sorted(scores) == sorted(formats) and {s["images"] for s in scores.values()} == {tested}
    assert scores["keras"]["vs_keras"] == 0 and scores["keras"]["vs_keras_interval"] == [0, 0]
    # The float32 formats compute the same network: the same F2 on every test image.
    for name in ("saved_model", "tflite"):
        assert scores[name]["f2"] == pytest.approx(scores["keras"]["f2"], abs=1e-4)


def test_the_quantized_models_predict_close_to_the_keras_model(exported, synthetic_dataset):
    project, out, _ = exported
    model = loading.load_model(project / "final" / "model.keras")
    paths = sorted((Path(synthetic_dataset) / "train_v2").glob("*.jpg"))[:2]
    images = np.stack([pipeline.decode_image(str(path)).numpy() for path in paths])
    expected, _ = prediction.predict_batch(model, images)
    for name, tolerance in (("model_float16.tflite", 1e-2), ("model_dynamic.tflite", 0.1)):
        quantized = exporting.TFLiteModel(out / name)
        probabilities, _ = prediction.predict_batch(quantized, images)
        assert np.abs(probabilities - expected).max() <= tolerance, name


def test_exported_models_predict_what_the_keras_model_predicts(exported, synthetic_dataset):
    import tensorflow as tf

    project, out, _ = exported
    model = loading.load_model(project / "final" / "model.keras")
    paths = sorted((Path(synthetic_dataset) / "train_v2").glob("*.jpg"))[:4]
    images = np.stack([pipeline.decode_image(str(path)).numpy() for path in paths])
    expected = model.predict_on_batch(images)
    saved = tf.saved_model.load(str(out / exporting.SAVED_MODEL))
    for outputs in (
        saved.serve(images),
        exporting.TFLiteModel(out / exporting.TFLITE).predict_on_batch(images),
    ):
        outputs = outputs if isinstance(outputs, dict) else {"ship_probability": outputs}
        expected_outputs = (
            expected if isinstance(expected, dict) else {"ship_probability": expected}
        )
        for name, values in expected_outputs.items():
            np.testing.assert_allclose(np.asarray(outputs[name]), values, atol=1e-4)


def test_the_tflite_model_pads_smaller_images_and_refuses_larger_ones(exported):
    _, out, _ = exported
    model = exporting.TFLiteModel(out / exporting.TFLITE)
    probabilities, _ = prediction.predict_batch(model, np.full((2, 40, 50, 3), 90, np.float32))
    assert probabilities.shape == (2, 40, 50)
    assert np.isfinite(probabilities).all()
    with pytest.raises(ValueError, match="larger than the exported model's 64 x 64"):
        model.predict_on_batch(np.zeros((1, 96, 64, 3), np.float32))


@pytest.mark.slow
def test_inference_from_the_tflite_file_lists_the_same_ships_as_from_keras(
    exported, synthetic_dataset, tmp_path
):
    project, out, _ = exported
    images = str(Path(synthetic_dataset) / "train_v2")
    tables = {}
    for name, model in (
        ("keras", project / "final" / "model.keras"),
        ("tflite", out / exporting.TFLITE),
    ):
        folder = tmp_path / name
        command = inference_command(
            project.parent, images, "--model", str(model), "--out", str(folder)
        )
        result = run([*command, *LOOSE])
        assert result.returncode == 0, result.stderr[-3000:]
        tables[name] = (
            pd.read_csv(folder / "submission.csv", keep_default_na=False),
            pd.read_csv(folder / "ships.csv"),
        )
    (keras_rows, keras_ships), (tflite_rows, tflite_ships) = tables["keras"], tables["tflite"]
    assert (keras_rows.EncodedPixels != "").sum() > 0
    pd.testing.assert_frame_equal(keras_rows, tflite_rows)
    pd.testing.assert_frame_equal(keras_ships, tflite_ships, atol=1e-4, check_exact=False)


@pytest.mark.slow
def test_export_mistakes_are_one_line(trained_project, tmp_path):
    project, _ = trained_project
    command = [sys.executable, str(ROOT / "export.py"), "--results-dir", str(project.parent)]
    cases = [
        (["--model", str(tmp_path / "missing.keras")], "model file not found"),
        (["--image-size", "100"], "--image-size must be a positive multiple of 32"),
        (["--parity-images", str(tmp_path / "missing.jpg")], "parity image not found"),
    ]
    for arguments, message in cases:
        result = run([*command, "--out", str(tmp_path / "out"), *arguments])
        assert result.returncode == 2, result.stderr[-3000:]
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()
