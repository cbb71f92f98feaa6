import subprocess
import sys
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

import hypermodel

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("levels", "base_filters", "dropout", "batch_norm", "upsampling"),
    [
        (2, 4, 0.0, False, "transpose"),
        (5, 4, 0.3, True, "resize"),
        (3, 8, 0.1, True, "transpose"),
    ],
)
def test_unet_corners_build_and_keep_the_image_size(
    levels, base_filters, dropout, batch_norm, upsampling
):
    model = hypermodel.build_unet(levels, base_filters, dropout, batch_norm, upsampling)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    probabilities = model.predict_on_batch(images)
    assert probabilities.shape == (2, 64, 96, 1)
    assert np.all((probabilities > 0) & (probabilities < 1))
    # The deepest layer has base_filters * 2**levels filters.
    assert model.get_layer("bottleneck_conv1").filters == base_filters * 2**levels


def test_unet_is_fully_convolutional():
    model = hypermodel.build_unet(3, 4)
    for size in (32, 128):
        assert model.predict_on_batch(np.zeros((1, size, size, 3), np.float32)).shape == (
            1,
            size,
            size,
            1,
        )


def test_initial_output_is_near_the_ship_prior():
    model = hypermodel.build_unet(2, 4, batch_norm=False, ship_prior=0.01)
    # Zero-initialised bias path: with a black image the output is the sigmoid of the bias.
    output = model.predict_on_batch(np.zeros((1, 32, 32, 3), np.float32))
    assert output.mean() == pytest.approx(0.01, abs=0.005)


@pytest.mark.parametrize(("size", "levels"), [(100, 3), (48, 5), (250, 2)])
def test_sizes_the_levels_cannot_divide_are_rejected(size, levels):
    with pytest.raises(ValueError, match=rf"input size {size} cannot go through {levels} levels"):
        hypermodel.build_unet(levels, 4, input_size=size)


def test_levels_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="levels must be between 2 and 5"):
        hypermodel.build_unet(6, 4)


@pytest.mark.slow
def test_saved_model_reloads_in_a_fresh_process_without_custom_objects(tmp_path):
    model = hypermodel.build_unet(2, 4)
    hypermodel.compile_unet(model, 1e-3, "focal", 0.25)
    path = tmp_path / "model.keras"
    model.save(path)
    script = (
        "import keras, numpy as np, hypermodel\n"
        f"model = keras.saving.load_model({str(path)!r})\n"
        "assert model.loss.pixel_loss == 'focal' and model.loss.pixel_weight == 0.25\n"
        "print(model.predict_on_batch(np.zeros((1, 32, 32, 3), 'float32')).shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 32, 32, 1)" in result.stdout


def test_search_space_overrides_fix_restrict_and_narrow():
    space = {
        d.name: d
        for d in hypermodel.search_space(
            ["levels=4", "base_filters=8,32", "learning_rate=1e-4:1e-3", "batch_norm=false"]
        )
    }
    hp = keras_tuner.HyperParameters()
    assert space["levels"].define(hp) == 4
    levels = next(defined for defined in hp.space if defined.name == "levels")
    assert isinstance(levels, keras_tuner.engine.hyperparameters.Fixed)
    assert space["base_filters"].values == (8, 32)
    assert space["learning_rate"].values == (1e-4, 1e-3) and space["learning_rate"].log
    assert space["batch_norm"].define(hp) is False
    value = space["learning_rate"].define(hp)
    assert 1e-4 <= value <= 1e-3


def test_with_pretrained_weights_the_search_uses_the_pretrained_encoder_unless_told_otherwise():
    def values(**kwargs):
        return {d.name: d.values for d in hypermodel.search_space(**kwargs)}

    assert values()["encoder"] == ("unet",)
    assert values(pretrained=True)["encoder"] == ("mobilenet_v2",)
    assert values(pretrained=True)["encoder_frozen_epochs"] == (0, 1, 2, 4)  # searched with one
    chosen = values(overrides=["encoder=unet,resnet50"], pretrained=True)
    assert chosen["encoder"] == ("unet", "resnet50")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("depth=4", "unknown hyperparameter 'depth'"),
        ("levels=7", r"levels: 7 is outside \[2, 5\]"),
        ("levels=four", "levels: 'four' is not valid"),
        ("base_filters=0", r"base_filters: 0 is outside \[1, 512\]"),
        ("upsampling=nearest", "upsampling: .nearest. is not valid"),
        ("learning_rate=1e-2:1e-3", "low > high"),
        ("levels", "must look like name=value"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ValueError, match=message):
        hypermodel.search_space([override])


def test_hypermodel_builds_the_fixed_configuration():
    values = {
        "levels": 2,
        "base_filters": 4,
        "dropout": 0.1,
        "batch_norm": True,
        "upsampling": "resize",
        "learning_rate": 0.002,
        "pixel_loss": "focal",
        "pixel_weight": 0.75,
        "batch_size": 4,
        "ship_loss_weight": 0.0,
    }
    space = hypermodel.search_space([f"{k}={v}" for k, v in values.items()])
    model = hypermodel.ShipUNetHyperModel(space).build(hypermodel.fixed_hyperparameters(values))
    assert model.name == "unet_2x4"
    assert model.loss.pixel_loss == "focal" and model.loss.pixel_weight == 0.75
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)
    assert any(isinstance(layer, keras.layers.UpSampling2D) for layer in model.layers)


def test_oversized_models_fail_the_trial_not_the_search():
    builder = hypermodel.ShipUNetHyperModel(
        hypermodel.search_space(["levels=5", "base_filters=32"]), max_parameters=1000
    )
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="over the limit"):
        builder.build(keras_tuner.HyperParameters())


def test_a_diverging_trial_is_marked_failed():
    builder = hypermodel.ShipUNetHyperModel(
        hypermodel.search_space(["levels=2", "base_filters=4", "batch_size=4"]), images_per_epoch=8
    )
    hp = keras_tuner.HyperParameters()
    model = builder.build(hp)
    # A NaN in the targets poisons the loss on the first step, as a diverging run would.
    masks = np.full((8, 32, 32, 1), np.nan, np.float32)
    stream = tf.data.Dataset.from_tensor_slices(
        (np.zeros((8, 32, 32, 3), np.float32), masks)
    ).repeat()
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="NaN"):
        builder.fit(hp, model, stream, epochs=1, verbose=0)


def test_each_dimensions_start_value_is_its_default_kept_inside_a_narrowed_range():
    space = {d.name: d for d in hypermodel.search_space(["learning_rate=1e-4:5e-4", "levels=3"])}
    assert space["learning_rate"].start_value() == 5e-4  # the default 1e-3, brought inside
    assert space["levels"].start_value() == 3  # fixed by the override
    assert space["upsampling"].start_value() == "transpose"
    pretrained = {d.name: d.start_value() for d in hypermodel.search_space(pretrained=True)}
    assert pretrained["learning_rate"] == 3e-4 and pretrained["encoder_frozen_epochs"] == 2
    assert pretrained["base_filters"] == 16 and pretrained["upsampling"] == "resize"


def test_the_space_defaults_are_keras_tuners_defaults_too():
    hp = keras_tuner.HyperParameters()
    for dimension in hypermodel.search_space():
        dimension.define(hp)
    defaults = {p.name: p.default for p in hp.space}
    assert defaults["levels"] == 4 and defaults["learning_rate"] == 1e-3
    assert defaults["batch_norm"] is True and defaults["ship_loss_weight"] == 0.5
