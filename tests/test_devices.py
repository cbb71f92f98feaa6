"""Every device the user has: mixed precision, and the mirrored strategy over two CPU replicas.

A CPU split into two logical devices (``SHIPSEG_CPU_REPLICAS=2``) runs the code path of two
GPUs: replicas, the global batch split across them, gradients all-reduced.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import hypermodel
from conftest import run, search_command, train_command
from shipseg.core import runtime
from shipseg.model import loading, unet
from shipseg.train import run as retraining

TWO_REPLICAS = {runtime.CPU_REPLICAS_VARIABLE: "2"}


@pytest.fixture()
def mixed_precision():
    """Keras's global policy set to mixed for one test, and back to float32 after it."""
    runtime.set_precision(True)
    yield
    runtime.set_precision(False)


def tiny_batches(count: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, size, size, 3)).astype("float32")
    masks = np.zeros((count, size, size, 1), "float32")
    masks[:, 8:16, 10:24] = 1.0
    images[masks[..., 0] > 0] = 250.0  # bright ships on a noisy sea: learnable at once
    return images, masks


def test_a_mixed_precision_unet_trains_with_a_finite_falling_loss_and_float32_outputs(
    mixed_precision,
):
    builder = hypermodel.ShipUNetHyperModel(
        hypermodel.search_space(["levels=2", "base_filters=4", "learning_rate=0.01"]),
        mixed_precision=True,
    )
    model = builder.build(hypermodel.fixed_hyperparameters({"ship_loss_weight": 0.0}))
    assert model.layers[2].compute_dtype == "float16"
    images, masks = tiny_batches()
    losses = model.fit(images, masks, epochs=6, batch_size=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert model.predict(images, verbose=0).dtype == np.float32


def test_a_model_trained_mixed_reloads_computing_in_float32_with_the_same_probabilities(
    mixed_precision, tmp_path
):
    model = unet.build_unet(levels=2, base_filters=4, ship_head=True)
    unet.compile_unet(model, 1e-3, "focal", 0.5, 0.5)
    images, _ = tiny_batches()
    mixed = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    in_training = loading.load_model(tmp_path / "model.keras")  # train.py: still mixed here
    assert {layer.compute_dtype for layer in in_training.layers} == {"float32"}
    runtime.set_precision(False)  # a CPU inference process: float32 by default
    loaded = loading.load_model(tmp_path / "model.keras")
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    again = loaded.predict(images, verbose=0)
    for name in ("ship_probability", "has_ship"):
        assert again[name].dtype == np.float32
        np.testing.assert_allclose(again[name], mixed[name], atol=2e-3)


def test_a_float32_model_is_loaded_as_it_is():
    model = unet.build_unet(levels=2, base_filters=4)
    assert unet.in_float32(model) is model


@pytest.mark.slow
def test_train_multi_gpu_mirrors_over_two_replicas_writing_the_same_files(
    finished_search, tmp_path
):
    project, _ = finished_search
    copy = shutil.copytree(
        project, tmp_path / "results" / "tiny", ignore=shutil.ignore_patterns("final")
    )
    # A quick learner, so that the loss falls within the test's few epochs.
    values = json.loads((project / "best_hparams.json").read_text())["hyperparameters"]
    hparams = tmp_path / "quick.json"
    hparams.write_text(json.dumps({**values, "learning_rate": 0.01, "dropout": 0.0}))
    flags = ["--hparams", str(hparams), "--project", "tiny", "--epochs", "4", "--patience", "4"]
    command = train_command(copy.parent, *flags, "--images-per-epoch", "64", "--verbose", "0")
    result = run([*command, "--multi-gpu"], env=TWO_REPLICAS)
    assert result.returncode == 0, result.stderr[-3000:]
    final = copy / "final"
    assert all((final / name).exists() for name in retraining.FINAL_FILES)
    assert json.loads((final / "metrics.json").read_text())["replicas"] == 2
    losses = pd.read_csv(final / "history.csv")["loss"].to_numpy()
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert json.loads((final / "config.json").read_text())["devices"]["multi_gpu"] is True


@pytest.mark.slow
def test_a_search_trial_mirrors_over_two_replicas_and_records_it(synthetic_dataset, tmp_path):
    command = search_command(synthetic_dataset, tmp_path, "--tuner", "random", "--max-trials", "2")
    quick = ["--max-epochs", "3", "--images-per-epoch", "64", "--hp", "learning_rate=0.003"]
    result = run([*command, *quick, "--multi-gpu", "--mixed-precision"], env=TWO_REPLICAS)
    assert result.returncode == 0, result.stderr[-3000:]
    project = tmp_path / "tiny"
    for name in ("trials.csv", "best_hparams.json", "search_config.json", "report.md"):
        assert (project / name).is_file(), name
    trial_dirs = sorted((project / "tuner").glob("trial_*"))
    timings = [json.loads((folder / "timing.json").read_text()) for folder in trial_dirs]
    assert len(timings) == 2
    assert {t["strategy"] for t in timings} == {"MirroredStrategy (2 replicas)"}
    for timing in timings:
        losses = timing["losses"]
        assert len(losses) == 3 and np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    record = json.loads((project / "search_config.json").read_text())
    assert record["multi_gpu"] and record["mixed_precision"]
