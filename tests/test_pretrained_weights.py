"""The real-data recipe's pretrained encoder with its real ImageNet weights (../shared/weights).

The other encoder tests run on random weights; these check what the recipe relies on with the
file it is given: the weights arrive where they belong, the taps see ImageNet features, and a
frozen epoch trains the decoder and leaves the encoder exactly as loaded.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import hypermodel
from shipseg.model import encoders


def recipe_model(weights, levels: int = 4, frozen_epochs: int = 1):
    values = {d.name: d.values[0] for d in hypermodel.DEFAULT_SPACE}
    values.update(
        levels=levels,
        base_filters=8,
        batch_norm=True,
        encoder="mobilenet_v2",
        encoder_frozen_epochs=frozen_epochs,
        ship_loss_weight=0.5,
    )
    builder = hypermodel.ShipUNetHyperModel(encoder_weights=str(weights))
    return builder.build(hypermodel.fixed_hyperparameters(values))


def test_the_weights_file_is_accepted_and_loads_every_layer_the_encoder_uses(mobilenet_weights):
    encoders.check_weights(["unet", "mobilenet_v2"], str(mobilenet_weights))
    reference = keras.applications.MobileNetV2(include_top=False, weights=None)
    reference.load_weights(mobilenet_weights)
    encoder = encoders.build_encoder("mobilenet_v2", 4, str(mobilenet_weights))
    compared = 0
    for layer in encoder.layers:
        if layer.weights and layer.name in {lay.name for lay in reference.layers}:
            for ours, theirs in zip(
                layer.get_weights(), reference.get_layer(layer.name).get_weights(), strict=True
            ):
                np.testing.assert_array_equal(ours, theirs)
            compared += 1
    # Four levels stop at block 13's expansion: most of the backbone's weighted layers.
    assert compared > 60


def test_the_taps_are_the_imagenet_networks_stages_at_strides_2_to_16(mobilenet_weights):
    encoder = encoders.build_encoder("mobilenet_v2", 4, str(mobilenet_weights))
    reference = keras.applications.MobileNetV2(include_top=False, weights=None)
    reference.load_weights(mobilenet_weights)
    stages = encoders.BACKBONES["mobilenet_v2"].stages[:4]
    tapped = keras.Model(reference.input, [reference.get_layer(s).output for s in stages])
    image = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
    ours = encoder.predict_on_batch(image)
    theirs = tapped.predict_on_batch(keras.applications.mobilenet_v2.preprocess_input(image))
    assert [f.shape[1:3] for f in ours] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    for mine, expected in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_frozen_epoch_trains_the_decoder_and_head_and_not_the_pretrained_encoder(
    mobilenet_weights,
):
    model = recipe_model(mobilenet_weights, frozen_epochs=1)
    encoder = model.get_layer("encoder")
    loaded = [w.copy() for w in encoder.get_weights()]
    decoder_before = [w.copy() for w in model.get_layer("ship_probability").get_weights()]
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    masks = np.zeros((4, 64, 64, 1), np.float32)
    masks[:2, 20:30, 10:40] = 1
    targets = {"ship_probability": masks, "has_ship": np.array([[1], [1], [0], [0]], np.float32)}
    model.fit(
        images, targets, batch_size=2, epochs=1, verbose=0, callbacks=[encoders.FreezeEncoder(1)]
    )
    # Weights and batch-norm statistics alike: a frozen encoder runs in inference mode.
    assert all(np.array_equal(a, b) for a, b in zip(loaded, encoder.get_weights(), strict=True))
    decoder_after = model.get_layer("ship_probability").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(decoder_before, decoder_after, strict=True))
