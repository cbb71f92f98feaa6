"""Post-processing tuning against brute force, and the helpers around the search's settings."""

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import evaluation
import inference
import search
from shipseg import atomic, cli, postprocess, splits


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
    image_thresholds = np.linspace(0.3, 1.0, 29)
    for threshold, image_threshold, min_size in itertools.product(
        postprocess.THRESHOLDS, image_thresholds, postprocess.MIN_SHIP_PIXELS
    ):
        config = evaluation.PostprocessConfig(threshold, max(image_threshold, threshold), min_size)
        score = evaluation.evaluate_model(BrightnessModel(), table, None, config)["f2"]
        best_brute_force = max(best_brute_force, score)
    # The exact sweep finds every threshold a grid can, and those between its points.
    assert tuned["f2"] >= best_brute_force - 1e-9
    chosen = evaluation.evaluate_model(BrightnessModel(), table, None, tuned["config"])["f2"]
    assert chosen == pytest.approx(tuned["f2"])


def test_sample_images_keeps_the_share_of_ship_images(synthetic_table):
    ship_share = (synthetic_table.ship_count > 0).mean()
    sample = splits.sample_images(synthetic_table, 20, seed=1)
    assert len(sample) == 20 and sample.ImageId.is_unique
    assert (sample.ship_count > 0).mean() == pytest.approx(ship_share, abs=0.05)
    assert sample.equals(splits.sample_images(synthetic_table, 20, seed=1))
    assert len(splits.sample_images(synthetic_table, None)) == len(synthetic_table)
    with pytest.raises(ValueError, match="at least 1"):
        splits.sample_images(synthetic_table, 0)


@pytest.mark.parametrize(
    ("variables", "role"),
    [
        ({}, "single"),
        (
            {
                "KERASTUNER_TUNER_ID": "chief",
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "1",
            },
            "chief",
        ),
        (
            {
                "KERASTUNER_TUNER_ID": "chief0",
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "1",
            },
            "chief",
        ),
        (
            {
                "KERASTUNER_TUNER_ID": "tuner3",
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "1",
            },
            "worker",
        ),
    ],
)
def test_tuner_role_follows_keras_tuner(monkeypatch, variables, role):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert search.tuner_role() == role


def test_half_configured_distribution_is_refused(monkeypatch):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    monkeypatch.delenv("KERASTUNER_ORACLE_IP", raising=False)
    with pytest.raises(cli.UserError, match="KERASTUNER_ORACLE_IP"):
        search.tuner_role()


def test_default_output_folder_follows_the_model():
    assert inference.default_output_dir(Path("results/p/final/model.keras")) == Path(
        "results/p/predictions"
    )
    assert inference.default_output_dir(Path("/tmp/model.keras")) == Path("/tmp/predictions")


def test_atomic_writes_leave_normal_permissions(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json_atomically(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
