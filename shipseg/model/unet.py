"""The ship U-Net: a pure factory from plain arguments, and how it is compiled.

``build_unet`` makes the network (the plain encoder trained from scratch or a pretrained one
from ``shipseg.model.encoders``, a decoder, and optionally the image-level ship head);
``compile_unet`` gives it the loss and metrics of ``shipseg.model.losses``. Importing this module
registers them, so a saved ``.keras`` model reloads in a fresh process without
``custom_objects``.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from shipseg.model import encoders
from shipseg.model.losses import DiceScore, IoUScore, WeightedLoss

MIN_LEVELS, MAX_LEVELS = 2, 5


def check_input_size(size: int, levels: int) -> None:
    """Raises ValueError unless ``levels`` halvings of ``size`` pixels stay whole numbers."""
    if not MIN_LEVELS <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be between {MIN_LEVELS} and {MAX_LEVELS}, got {levels}")
    if size % 2**levels:
        raise ValueError(
            f"input size {size} cannot go through {levels} levels: it must be a multiple of "
            f"2**{levels} = {2**levels} (e.g. {size - size % 2**levels or 2**levels})"
        )


def _conv_block(x, filters: int, batch_norm: bool, name: str):
    for index in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"{name}_conv{index}",
        )(x)
        if batch_norm:
            # Momentum 0.9, not Keras's 0.99: Hyperband's short trials end before 0.99's moving
            # averages settle, and a U-Net that is right in training is then wrong in inference.
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def build_unet(
    levels: int = 4,
    base_filters: int = 16,
    dropout: float = 0.0,
    batch_norm: bool = True,
    upsampling: str = "transpose",
    input_size: int | None = None,
    ship_prior: float = 0.01,
    ship_head: bool = False,
    encoder: str = encoders.PLAIN,
    encoder_weights: str | None = None,
) -> keras.Model:
    """Builds a U-Net for binary ship masks.

    Encoder: ``levels`` blocks of two 3x3 convolutions, each followed by 2x2 max pooling, the
    filters doubling per level from ``base_filters``. A bottleneck block, then a decoder that
    upsamples, concatenates the encoder's output of the same level (skip connection) and
    convolves. The network is fully convolutional: trained on crops, it predicts whole images
    of any size divisible by ``2 ** levels``.

    Args:
        levels: Number of down-sampling levels, 2 to 5.
        base_filters: Filters of the first level.
        dropout: Spatial dropout rate after each pooling and in the bottleneck.
        batch_norm: Batch normalisation after every convolution.
        upsampling: ``"transpose"`` (learned 2x2 transposed convolution) or ``"resize"``
            (bilinear upsampling followed by a 1x1 convolution).
        input_size: Fixes a square input size (checked against ``levels``); None accepts any.
        ship_prior: Initial output probability; ships are rare, so starting near their share
            avoids a first epoch spent unlearning 0.5 everywhere.
        ship_head: Adds the image-level decision "does this image hold a ship?" (see
            ``ship_head``): the model then returns a dict, ``{"ship_probability": mask,
            "has_ship": (batch, 1) probability}``.
        encoder: ``"unet"`` (the encoder above) or a pretrained backbone of
            ``shipseg.model.encoders.BACKBONES``, tapped at strides 2 to ``2 ** levels``; the image
            itself (scaled to 0-1) is then the full-resolution skip, ``batch_norm`` applies
            to the decoder only and ``dropout`` to the bottleneck only.
        encoder_weights: The backbone's initial weights: ``"imagenet"``, ``"none"`` / None
            (random) or a weights file's path.

    Returns:
        An uncompiled ``keras.Model`` from RGB images in 0-255 (float) to one sigmoid channel
        (and the image's ship probability when ``ship_head``).
    """
    _check_unet_arguments(levels, dropout, upsampling, input_size, encoder)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    scaled = layers.Rescaling(1 / 255, name="scale_0_1")(inputs)
    if encoder == encoders.PLAIN:
        x, skips = _encoder(scaled, levels, base_filters, dropout, batch_norm)
    else:
        *features, x = encoders.build_encoder(encoder, levels, encoder_weights)(inputs)
        skips = [scaled, *features]
        if dropout:
            x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    has_ship = _ship_head(x) if ship_head else None
    outputs = _mask_output(_decoder(x, skips, base_filters, batch_norm, upsampling), ship_prior)
    if has_ship is not None:
        outputs = {"ship_probability": outputs, "has_ship": has_ship}
    prefix = "unet" if encoder == encoders.PLAIN else f"unet_{encoder}"
    return keras.Model(inputs, outputs, name=f"{prefix}_{levels}x{base_filters}")


def _mask_output(x, ship_prior: float):
    """The per-pixel ship probability, its bias starting at the ships' share ``ship_prior``."""
    return layers.Conv2D(
        1,
        1,
        activation="sigmoid",
        dtype="float32",
        name="ship_probability",
        bias_initializer=keras.initializers.Constant(math.log(ship_prior / (1 - ship_prior))),
    )(x)


def _check_unet_arguments(
    levels: int, dropout: float, upsampling: str, input_size, encoder: str
) -> None:
    if input_size is not None:
        check_input_size(input_size, levels)
    elif not MIN_LEVELS <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be between {MIN_LEVELS} and {MAX_LEVELS}, got {levels}")
    if upsampling not in ("transpose", "resize"):
        raise ValueError(f"upsampling must be 'transpose' or 'resize', got {upsampling!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if encoder not in encoders.ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(encoders.ENCODERS)}, got {encoder!r}")


def _encoder(x, levels: int, base_filters: int, dropout: float, batch_norm: bool):
    """Conv blocks and poolings down to the bottleneck; returns it and the skip outputs."""
    skips = []
    for level in range(levels):
        x = _conv_block(x, base_filters * 2**level, batch_norm, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"down{level}_pool")(x)
        if dropout:
            x = layers.SpatialDropout2D(dropout, name=f"down{level}_dropout")(x)
    x = _conv_block(x, base_filters * 2**levels, batch_norm, "bottleneck")
    if dropout:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    return x, skips


def _decoder(x, skips: list, base_filters: int, batch_norm: bool, upsampling: str):
    """Upsampling, skip connection and conv block per level, back to full resolution."""
    for level in reversed(range(len(skips))):
        filters = base_filters * 2**level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(
                filters, 2, strides=2, padding="same", name=f"up{level}_transpose"
            )(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
            x = layers.Conv2D(filters, 1, name=f"up{level}_project")(x)
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_block(x, filters, batch_norm, f"up{level}")
    return x


def _ship_head(bottleneck):
    """The image-level ship decision: global max pooling of the bottleneck, one sigmoid unit.

    Max rather than average pooling: the network trains on 256 crops and predicts whole 768
    images, nine times the area; a maximum over positions means the same on both ("the most
    ship-like place"), where an average would dilute one ship ninefold. The bottleneck sees
    the widest context (waves, coast, cloud), which is what tells a ship from clutter.
    """
    pooled = layers.GlobalMaxPooling2D(name="ship_head_pool")(bottleneck)
    hidden = layers.Dense(32, activation="relu", name="ship_head_dense")(pooled)
    return layers.Dense(1, activation="sigmoid", dtype="float32", name="has_ship")(hidden)


def has_ship_head(model: keras.Model) -> bool:
    """Whether ``model`` also predicts each image's ship probability (see ``build_unet``)."""
    try:
        return isinstance(model.output, dict)
    except AttributeError:  # A model never called (a foreign file): no outputs to speak of.
        return False


def compile_unet(
    model: keras.Model,
    learning_rate: float,
    pixel_loss: str,
    pixel_weight: float,
    ship_loss_weight: float = 0.0,
    jit_compile: bool = False,
) -> None:
    """Compiles with Adam, the weighted loss, and the pixel Dice and IoU metrics.

    With a ship head the loss adds ``ship_loss_weight`` times the head's binary cross-entropy
    against "the crop holds a ship pixel", and the head reports its accuracy.

    Args:
        model: A U-Net from ``build_unet``, with or without a ship head.
        learning_rate: Adam's initial step size (the search samples it log-uniformly).
        pixel_loss: The pixel-wise part of the loss: a key of ``losses.PIXEL_LOSSES``
            (``"bce"`` or ``"focal"``).
        pixel_weight: Its share ``w`` in [0, 1] of ``w * pixel + (1 - w) * dice``.
        ship_loss_weight: Weight of the ship head's loss beside the pixel loss's 1; ignored
            without a head.
        jit_compile: Compile the training step with XLA (measured 2.5x slower on this
            project's CPU; offered for GPUs, where ``benchmarks/gpu_check.py`` measures it).

    Raises:
        ValueError: For an unknown ``pixel_loss`` or a ``pixel_weight`` outside [0, 1].
    """
    optimizer = keras.optimizers.Adam(learning_rate)
    pixel = WeightedLoss(pixel_loss, pixel_weight)
    if not has_ship_head(model):
        model.compile(
            optimizer=optimizer,
            loss=pixel,
            metrics=[DiceScore(), IoUScore()],
            jit_compile=jit_compile,
        )
        return
    model.compile(
        optimizer=optimizer,
        jit_compile=jit_compile,
        loss={"ship_probability": pixel, "has_ship": "binary_crossentropy"},
        loss_weights={"ship_probability": 1.0, "has_ship": ship_loss_weight},
        metrics={
            "ship_probability": [DiceScore(), IoUScore()],
            "has_ship": [keras.metrics.BinaryAccuracy(name="accuracy")],
        },
    )


def in_float32(model: keras.Model) -> keras.Model:
    """``model`` computing in float32, with the same weights: how a mixed-precision model loads.

    A model trained under ``mixed_float16`` saves that policy in every layer; loaded as it is,
    it would compute in float16 on a CPU too (slow there, and not the probabilities the
    post-processing was tuned on). Its weights are float32 already, so rebuilding it from its
    config with the policies set to float32 and copying the weights gives the float32 model.
    A float32 model comes back as it is.
    """
    config = model.get_config()
    if not _uses_mixed_precision(config):
        return model
    # The models' own configs name no policy: they take the global one, float32 here.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        rebuilt = model.__class__.from_config(_with_float32_policies(config))
    finally:
        keras.config.set_dtype_policy(policy)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _uses_mixed_precision(config) -> bool:
    if isinstance(config, dict):
        name = config.get("config", {}).get("name") if config.get("class_name") else None
        is_policy = "DTypePolicy" in str(config.get("class_name", ""))
        return (is_policy and str(name).startswith("mixed")) or any(
            _uses_mixed_precision(value) for value in config.values()
        )
    return isinstance(config, list) and any(_uses_mixed_precision(item) for item in config)


def _with_float32_policies(config):
    """A copy of a Keras config with every mixed dtype policy replaced by float32."""
    if isinstance(config, list):
        return [_with_float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config
    if "DTypePolicy" in str(config.get("class_name", "")):
        return {**config, "config": {**config.get("config", {}), "name": "float32"}}
    return {key: _with_float32_policies(value) for key, value in config.items()}
