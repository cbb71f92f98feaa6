"""Pretrained encoders: taps, input scaling, weights files, freezing, saving, and the commands."""

from __future__ import annotations

import json
import sys
import urllib.error

import keras
import numpy as np
import pandas as pd
import pytest

import hypermodel
from conftest import ROOT, inference_command, run, search_command, train_command
from shipseg.core.errors import UserError
from shipseg.model import encoders

PRETRAINED = list(encoders.BACKBONES)
MODULES = {
    "mobilenet_v2": keras.applications.mobilenet_v2,
    "resnet50": keras.applications.resnet50,
}


def images(count: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name", PRETRAINED)
def test_each_encoder_gives_features_at_strides_2_to_32_and_the_unet_full_resolution(name):
    encoder = encoders.build_encoder(name, 5)
    features = encoder.predict_on_batch(images())
    assert [f.shape[1] for f in features] == [32, 16, 8, 4, 2]
    model = hypermodel.build_unet(3, 4, encoder=name)
    assert model.predict_on_batch(images()).shape == (2, 64, 64, 1)
    # Three levels use the backbone up to stride 8 only: the deeper stages are left out.
    assert model.get_layer("encoder").count_params() < encoder.count_params() / 4


@pytest.mark.parametrize("name", PRETRAINED)
def test_the_encoder_scales_its_input_as_keras_applications_prescribes(name):
    encoder = encoders.build_encoder(name, 2)
    layer = next((lay for lay in encoder.layers if lay.name == f"{name}_preprocessing"), None)
    if name not in MODULES:  # EfficientNet scales 0-255 input inside the network
        assert layer is None
        assert any(isinstance(lay, keras.layers.Rescaling) for lay in encoder.layers)
        return
    expected = MODULES[name].preprocess_input(images().copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images())), expected, atol=1e-4)


def fit_one_step(model: keras.Model, epochs: int = 1, callbacks=()):
    masks = (images(2)[..., :1] > 128).astype(np.float32)
    return model.fit(
        images(2), masks, batch_size=2, epochs=epochs, callbacks=list(callbacks), verbose=0
    )


def build(name: str, levels: int = 3, frozen_epochs: int = 0, weights: str = "none"):
    values = {d.name: d.values[0] for d in hypermodel.DEFAULT_SPACE}
    values.update(levels=levels, base_filters=4, encoder=name, encoder_frozen_epochs=frozen_epochs)
    builder = hypermodel.ShipUNetHyperModel(encoder_weights=weights)
    return builder.build(hypermodel.fixed_hyperparameters(values))


@pytest.mark.slow
def test_each_encoder_trains_a_step_and_reloads_in_a_fresh_process_with_equal_output(tmp_path):
    expected = {}
    for name in PRETRAINED:
        model = build(name)
        history = fit_one_step(model)
        assert np.isfinite(history.history["loss"]).all()
        model.save(tmp_path / f"{name}.keras")
        expected[name] = model.predict_on_batch(images())
    script = (
        "import sys, numpy as np, keras, hypermodel\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)\n"
        f"for name in {PRETRAINED!r}:\n"
        f"    model = keras.saving.load_model(r'{tmp_path}/' + name + '.keras')\n"
        f"    np.save(r'{tmp_path}/' + name + '.npy', model.predict_on_batch(x))\n"
    )
    result = run([sys.executable, "-c", script], env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    for name in PRETRAINED:
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected[name], atol=1e-5)


def test_a_weights_file_the_user_saved_is_what_the_encoder_starts_from(tmp_path):
    keras.utils.set_random_seed(7)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None)
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    encoders.check_weights(["unet", "mobilenet_v2"], str(path))
    model = build("mobilenet_v2", levels=5, weights=str(path))
    loaded = model.get_layer("encoder").get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(loaded, backbone.get_layer("Conv1").get_weights()[0])
    assert not np.array_equal(
        loaded, build("mobilenet_v2", 5).get_layer("encoder").get_layer("Conv1").get_weights()[0]
    )


def test_a_weights_file_that_is_missing_fits_another_backbone_or_several_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^\S*nowhere.h5: --encoder-weights file not found"):
        encoders.check_weights(["mobilenet_v2"], str(tmp_path / "nowhere.h5"))
    path = tmp_path / "resnet.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None).save_weights(path)
    with pytest.raises(UserError, match="not weights for mobilenet_v2") as error:
        encoders.check_weights(["mobilenet_v2"], str(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    with pytest.raises(UserError, match="one weights file cannot serve"):
        encoders.check_weights(["mobilenet_v2", "resnet50"], str(path))
    with pytest.raises(UserError, match="efficientnet_b0 takes ImageNet weights only as"):
        encoders.check_weights(["efficientnet_b0"], str(path))


def test_imagenet_weights_without_a_network_say_where_keras_looks_and_how_to_pass_a_file(
    tmp_path, monkeypatch
):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(UserError) as error:
        encoders.check_weights(["unet", "mobilenet_v2"], "imagenet")
    message = str(error.value)
    cache_file = (
        tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    assert message.startswith(str(cache_file)) and "\n" not in message
    assert "could not be downloaded" in message and "--encoder-weights PATH" in message
    encoders.check_weights(["unet"], "imagenet")  # nothing to download for the plain U-Net


def test_a_frozen_encoder_keeps_its_weights_for_its_epochs_then_trains_with_a_fresh_optimizer():
    model = build("mobilenet_v2", levels=2, frozen_epochs=1)
    encoder = model.get_layer("encoder")
    snapshots = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(
            (
                [w.copy() for w in encoder.get_weights()],
                model.get_layer("ship_probability").get_weights()[0].copy(),
                int(model.optimizer.iterations.numpy()),
            )
        )
    )
    start = [w.copy() for w in encoder.get_weights()]
    fit_one_step(model, epochs=2, callbacks=[encoders.FreezeEncoder(1), record])
    (frozen, head_1, steps_1), (trained, head_2, steps_2) = snapshots
    assert all(np.array_equal(a, b) for a, b in zip(start, frozen, strict=True))  # statistics too
    first_kernel = encoder.get_layer("Conv1").get_weights()[0]
    assert not np.array_equal(first_kernel, start[0]) and np.array_equal(first_kernel, trained[0])
    assert not np.array_equal(head_1, head_2)
    assert steps_1 == 1 and steps_2 == 1  # the optimizer of the unfrozen epochs is a new one
    assert encoder.trainable


def test_the_encoders_batch_normalisation_keeps_imagenet_statistics_while_its_weights_train(
    tmp_path,
):
    model = build("mobilenet_v2", levels=2, frozen_epochs=1)
    encoder = model.get_layer("encoder")
    norm = encoder.get_layer("bn_Conv1")
    start = [w.copy() for w in norm.get_weights()]
    kernel = encoder.get_layer("Conv1").get_weights()[0].copy()
    fit_one_step(model, epochs=2, callbacks=[encoders.FreezeEncoder(1)])
    assert all(np.array_equal(a, b) for a, b in zip(start, norm.get_weights(), strict=True))
    assert not np.array_equal(encoder.get_layer("Conv1").get_weights()[0], kernel)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras").get_layer("encoder")
    assert loaded.trainable and not loaded.get_layer("bn_Conv1").trainable


def test_a_checkpoint_taken_in_a_frozen_epoch_loads_with_a_trainable_encoder(tmp_path):
    from shipseg.train.fitting import AtomicCheckpoint

    model = build("mobilenet_v2", levels=2, frozen_epochs=2)
    checkpoint = AtomicCheckpoint(tmp_path / "model.keras", None)
    freeze = encoders.FreezeEncoder(2)
    fit_one_step(model, epochs=1, callbacks=[freeze, checkpoint])
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("encoder").trainable
    assert len(loaded.trainable_weights) == len(model.trainable_weights)


@pytest.mark.parametrize("name", PRETRAINED)
@pytest.mark.slow
def test_each_encoder_searches_trains_the_best_and_predicts_from_the_command_line(
    name, synthetic_dataset, tmp_path
):
    flags = ["--hp", f"encoder={name}", "--tuner", "random", "--max-trials", "1"]
    search = run(search_command(synthetic_dataset, tmp_path, *flags, "--max-epochs", "2"))
    assert search.returncode == 0, search.stderr[-3000:]
    best = json.loads((tmp_path / "tiny" / "best_hparams.json").read_text())["hyperparameters"]
    assert best["encoder"] == name and best["encoder_frozen_epochs"] in (0, 2)
    assert (
        json.loads((tmp_path / "tiny" / "search_config.json").read_text())["encoder_weights"]
        == "none"
    )
    trained = run(train_command(tmp_path, "--best", "--epochs", "1", "--verbose", "0"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = json.loads((tmp_path / "tiny" / "final" / "config.json").read_text())
    assert config["hyperparameters"]["encoder"] == name and config["encoder_weights"] == "none"
    out = tmp_path / "predicted"
    predicted = run(
        inference_command(
            tmp_path, str(synthetic_dataset / "test_v2"), "--out", str(out), "--no-overlays"
        )
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    submission = pd.read_csv(out / "submission.csv")
    assert set(submission.ImageId) == {
        p.name for p in (synthetic_dataset / "test_v2").glob("*.jpg")
    }


@pytest.mark.slow
def test_a_search_asking_for_an_unknown_encoder_is_one_line(synthetic_dataset, tmp_path):
    result = run(search_command(synthetic_dataset, tmp_path, "--hp", "encoder=vgg16"))
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "encoder: 'vgg16' is not valid (allowed: unet,mobilenet_v2,efficientnet_b0,resnet50)"
        )
    )


@pytest.mark.parametrize("name", PRETRAINED)
@pytest.mark.slow
def test_exported_models_repeat_the_encoders_input_scaling(name, tmp_path):
    from shipseg.model import exporting

    model = build(name, levels=2)
    model.save(tmp_path / "model.keras")
    record = exporting.export_model(
        model, tmp_path / "model.keras", tmp_path / "export", 32, {}, images(2, 32)
    )
    assert max(record["parity_max_abs_difference"].values()) <= 1e-4
