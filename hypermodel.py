"""The ship U-Net and the search space over it.

Sections:
    1. ``build_unet``: a pure factory from plain arguments (the losses and metrics it compiles
       with live in ``shipseg.losses``; importing this module registers them, so a saved
       ``.keras`` model reloads in a fresh process without ``custom_objects``).
    2. The search space: every hyperparameter, its default range, and command-line overrides.
    3. ``ShipUNetHyperModel``: the ``keras_tuner.HyperModel`` tying them together, validated
       each epoch on whole images by ``shipseg.validation.WholeImageValidation``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import keras_tuner
import numpy as np
from keras import layers

from shipseg import encoders
from shipseg.losses import PIXEL_LOSSES, DiceScore, IoUScore, WeightedLoss
from shipseg.validation import WholeImageValidation

MIN_LEVELS, MAX_LEVELS = 2, 5

# ---------------------------------------------------------------------------------------------
# 1. The U-Net factory
# ---------------------------------------------------------------------------------------------


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
            ``shipseg.encoders.BACKBONES``, tapped at strides 2 to ``2 ** levels``; the image
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
    x = _decoder(x, skips, base_filters, batch_norm, upsampling)
    outputs = layers.Conv2D(
        1,
        1,
        activation="sigmoid",
        dtype="float32",
        name="ship_probability",
        bias_initializer=keras.initializers.Constant(math.log(ship_prior / (1 - ship_prior))),
    )(x)
    if has_ship is not None:
        outputs = {"ship_probability": outputs, "has_ship": has_ship}
    prefix = "unet" if encoder == encoders.PLAIN else f"unet_{encoder}"
    return keras.Model(inputs, outputs, name=f"{prefix}_{levels}x{base_filters}")


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
) -> None:
    """Compiles with Adam, the weighted loss, and the pixel Dice and IoU metrics.

    With a ship head the loss adds ``ship_loss_weight`` times the head's binary cross-entropy
    against "the crop holds a ship pixel", and the head reports its accuracy.
    """
    optimizer = keras.optimizers.Adam(learning_rate)
    pixel = WeightedLoss(pixel_loss, pixel_weight)
    if not has_ship_head(model):
        model.compile(optimizer=optimizer, loss=pixel, metrics=[DiceScore(), IoUScore()])
        return
    model.compile(
        optimizer=optimizer,
        loss={"ship_probability": pixel, "has_ship": "binary_crossentropy"},
        loss_weights={"ship_probability": 1.0, "has_ship": ship_loss_weight},
        metrics={
            "ship_probability": [DiceScore(), IoUScore()],
            "has_ship": [keras.metrics.BinaryAccuracy(name="accuracy")],
        },
    )


# ---------------------------------------------------------------------------------------------
# 2. The search space
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One hyperparameter: its name and the values the search may try.

    Attributes:
        name: The hyperparameter's name (as in ``best_hparams.json``).
        kind: ``"int"``, ``"float"``, ``"choice"`` or ``"bool"``.
        values: The choices (``choice``, ``bool``) or ``(low, high)`` (``int``, ``float``).
        step: Grid step for ``int`` / ``float`` ranges (None: continuous floats).
        log: Sample a float range on a log scale.
        limits: Hard bounds a user may narrow within, for ``int`` / ``float``.
        help: One line for ``--help``.
        allowed: For a ``choice`` of names: every name a user may ask for (default: ``values``),
            when the default range is narrower (the pretrained encoders).
    """

    name: str
    kind: str
    values: tuple
    step: float | None = None
    log: bool = False
    limits: tuple | None = None
    help: str = ""
    allowed: tuple | None = None

    def define(self, hp: keras_tuner.HyperParameters):
        """Registers this dimension with ``hp`` and returns the trial's value."""
        if len(self.values) == 1 or (
            self.kind in ("int", "float") and self.values[0] == self.values[1]
        ):
            return hp.Fixed(self.name, self.values[0])
        if self.kind == "int":
            return hp.Int(self.name, self.values[0], self.values[1], step=int(self.step or 1))
        if self.kind == "float":
            sampling = "log" if self.log else "linear"
            return hp.Float(
                self.name,
                self.values[0],
                self.values[1],
                step=None if self.log else self.step,
                sampling=sampling,
            )
        if self.kind == "bool":
            return hp.Boolean(self.name)
        return hp.Choice(self.name, list(self.values))

    def describe(self) -> str:
        """The range as a user would write it (``2:5``, ``8,16,32``)."""
        if self.kind in ("int", "float") and len(self.values) == 2:
            return f"{self.values[0]:g}:{self.values[1]:g}" + (" (log)" if self.log else "")
        text = ",".join(
            str(value).lower() if isinstance(value, bool) else str(value) for value in self.values
        )
        others = [value for value in self.allowed or () if value not in self.values]
        return f"{text} (also {','.join(others)})" if others else text

    def parse(self, text: str) -> Dimension:
        """A copy fixed or narrowed by a command-line value.

        ``value`` fixes it, ``a,b,c`` restricts it to choices, ``low:high`` narrows a range.

        Raises:
            ValueError: With a message naming the hyperparameter and the accepted values.
        """

        def convert(token: str):
            token = token.strip()
            try:
                if self.kind == "int":
                    return int(token)
                if self.kind == "float":
                    return float(token)
                if self.kind == "bool":
                    return {"true": True, "false": False, "1": True, "0": False}[token.lower()]
                if isinstance(self.values[0], int):
                    # Numeric choices (filters, batch size) accept any value within the limits.
                    return int(token)
                if token not in (self.allowed or self.values):
                    raise KeyError(token)
                return token
            except (ValueError, KeyError):
                allowed = ",".join(self.allowed) if self.allowed else self.describe()
                raise ValueError(
                    f"{self.name}: {token!r} is not valid (allowed: {allowed})"
                ) from None

        def check(value):
            if self.limits and not self.limits[0] <= value <= self.limits[1]:
                raise ValueError(
                    f"{self.name}: {value} is outside [{self.limits[0]}, {self.limits[1]}]"
                )
            return value

        if ":" in text and self.kind in ("int", "float"):
            low, high = (check(convert(part)) for part in text.split(":", 1))
            if low > high:
                raise ValueError(f"{self.name}: range {text} has low > high")
            return dataclasses.replace(self, values=(low, high))
        values = tuple(dict.fromkeys(check(convert(part)) for part in text.split(",")))
        return dataclasses.replace(self, kind="choice", values=values, log=False)


DEFAULT_SPACE: tuple[Dimension, ...] = (
    Dimension(
        "levels",
        "int",
        (3, 5),
        limits=(MIN_LEVELS, MAX_LEVELS),
        help="U-Net depth: number of down-sampling levels",
    ),
    Dimension(
        "base_filters",
        "choice",
        (8, 16, 32),
        limits=(1, 512),
        help="filters of the first level, doubling per level",
    ),
    Dimension(
        "dropout", "float", (0.0, 0.3), step=0.1, limits=(0.0, 0.9), help="spatial dropout rate"
    ),
    Dimension("batch_norm", "bool", (True, False), help="batch normalisation after convolutions"),
    Dimension("upsampling", "choice", ("transpose", "resize"), help="decoder upsampling"),
    Dimension(
        "learning_rate",
        "float",
        (1e-4, 3e-3),
        log=True,
        limits=(1e-6, 1.0),
        help="Adam learning rate",
    ),
    Dimension("pixel_loss", "choice", tuple(PIXEL_LOSSES), help="pixel-wise part of the loss"),
    Dimension(
        "pixel_weight",
        "float",
        (0.0, 1.0),
        step=0.25,
        limits=(0.0, 1.0),
        help="loss = w * pixel_loss + (1 - w) * dice",
    ),
    Dimension("batch_size", "choice", (4, 8, 16), limits=(1, 4096), help="training batch size"),
    Dimension(
        "ship_loss_weight",
        "float",
        (0.0, 1.0),
        step=0.25,
        limits=(0.0, 10.0),
        help="weight of the image-level ship head's loss; 0: no head (pixel maximum decides)",
    ),
    Dimension(
        "encoder",
        "choice",
        (encoders.PLAIN,),
        allowed=encoders.ENCODERS,
        help=f"encoder: the U-Net's own, or pretrained ({', '.join(encoders.BACKBONES)})",
    ),
    Dimension(
        "encoder_frozen_epochs",
        "choice",
        (0, 2),
        limits=(0, 10_000),
        help="first epochs with a pretrained encoder's weights fixed (searched only with one)",
    ),
)
# Hyperparameters added after searches were run: their value when a saved configuration lacks
# them (the model it describes had no such part).
ADDED_LATER = {"ship_loss_weight": 0.0, "encoder": encoders.PLAIN, "encoder_frozen_epochs": 0}


def search_space(overrides: Sequence[str] = ()) -> tuple[Dimension, ...]:
    """The default search space with command-line overrides applied.

    Args:
        overrides: ``name=value`` (fix), ``name=a,b`` (choices) or ``name=low:high`` (range).

    Raises:
        ValueError: For an unknown name, a malformed override or a value out of bounds.
    """
    space = {dimension.name: dimension for dimension in DEFAULT_SPACE}
    for override in overrides:
        name, separator, text = override.partition("=")
        name = name.strip()
        if not separator or not text.strip():
            raise ValueError(f"hyperparameter override {override!r} must look like name=value")
        if name not in space:
            raise ValueError(f"unknown hyperparameter {name!r} (known: {', '.join(space)})")
        space[name] = space[name].parse(text.strip())
    if not set(space["encoder"].values) & set(encoders.BACKBONES):
        # Freezing concerns pretrained encoders only: without one, searching it wastes trials.
        space["encoder_frozen_epochs"] = space["encoder_frozen_epochs"].parse("0")
    return tuple(space.values())


def fixed_hyperparameters(values: dict) -> keras_tuner.HyperParameters:
    """HyperParameters holding exactly ``values`` (for rebuilding a chosen configuration)."""
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        if not name.startswith("tuner/"):
            hp.Fixed(name, value)
    return hp


# ---------------------------------------------------------------------------------------------
# 3. The HyperModel
# ---------------------------------------------------------------------------------------------


class ShipUNetHyperModel(keras_tuner.HyperModel):
    """Search space and training loop for ship U-Nets.

    ``build`` samples the architecture, loss and learning rate; ``fit`` batches the training
    stream with the sampled batch size, validates on whole images after each epoch and marks
    trials that diverge or run out of memory as failed, so the search goes on.

    Args:
        space: Dimensions to search (see ``search_space``).
        validation: Whole-image validation settings; its table must not be empty.
        images_per_epoch: Training images per epoch (the stream is endless).
        seed: Start of the seed sequence for weight initialisation (one seed per build).
        max_parameters: Trials whose model has more weights fail at once (memory guard).
        encoder_weights: A pretrained encoder's initial weights: ``"none"``, ``"imagenet"`` or
            a file (see ``shipseg.encoders.check_weights``).
    """

    def __init__(
        self,
        space: Sequence[Dimension] = DEFAULT_SPACE,
        validation: WholeImageValidation | None = None,
        images_per_epoch: int = 512,
        seed: int = 0,
        max_parameters: int | None = None,
        encoder_weights: str = "none",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder_weights = encoder_weights
        self.space = tuple(space)
        self.validation = validation
        self.images_per_epoch = images_per_epoch
        self.seed = seed
        self.max_parameters = max_parameters
        self.builds = 0

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:  # noqa: D102
        values = {dimension.name: dimension.define(hp) for dimension in self.space}
        # Each build (trial or repeated execution) gets the next seed of a fixed sequence, so
        # a run is reproducible and --executions-per-trial averages different initialisations.
        keras.utils.set_random_seed(self.seed + self.builds)
        self.builds += 1
        model = build_unet(
            values["levels"],
            values["base_filters"],
            values["dropout"],
            values["batch_norm"],
            values["upsampling"],
            ship_head=values["ship_loss_weight"] > 0,
            encoder=values["encoder"],
            encoder_weights=self.encoder_weights,
        )
        if self.max_parameters and model.count_params() > self.max_parameters:
            raise keras_tuner.errors.FailedTrialError(
                f"model has {model.count_params():,} weights, "
                f"over the limit of {self.max_parameters:,}"
            )
        compile_unet(
            model,
            values["learning_rate"],
            values["pixel_loss"],
            values["pixel_weight"],
            values["ship_loss_weight"],
        )
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, x, *args, **kwargs):
        """Trains on the unbatched stream ``x`` with the trial's batch size.

        Raises:
            keras_tuner.errors.FailedTrialError: When the loss becomes NaN or memory runs out.
        """
        import tensorflow as tf

        batch_size = hp.get("batch_size")
        callbacks = list(kwargs.pop("callbacks", []))
        if self.validation is not None:
            validation = _copy_validation(self.validation, callbacks)
            callbacks.insert(0, validation)
        callbacks.insert(1 if self.validation is not None else 0, keras.callbacks.TerminateOnNaN())
        if encoders.has_encoder(model) and hp.get("encoder_frozen_epochs") > 0:
            callbacks.insert(0, encoders.FreezeEncoder(hp.get("encoder_frozen_epochs")))
        kwargs.setdefault("steps_per_epoch", max(1, math.ceil(self.images_per_epoch / batch_size)))
        kwargs.setdefault("shuffle", False)  # tf.data shuffles; Keras would only warn about it
        batches = x.batch(batch_size, drop_remainder=True)
        if has_ship_head(model):
            batches = batches.map(_with_ship_targets)
        try:
            history = model.fit(
                batches.prefetch(2),
                *args,
                callbacks=callbacks,
                **kwargs,
            )
        except (tf.errors.ResourceExhaustedError, MemoryError) as error:
            raise keras_tuner.errors.FailedTrialError(f"out of memory: {error}") from None
        losses = history.history.get("loss", [])
        if not losses or not np.all(np.isfinite(losses)):
            raise keras_tuner.errors.FailedTrialError(
                "the loss became NaN or infinite; trial stopped"
            )
        return history


def _with_ship_targets(images, masks):
    """Targets for a model with a ship head: the mask, and whether the crop holds a ship pixel."""
    import tensorflow as tf

    has_ship = tf.reduce_max(masks, axis=[1, 2])
    return images, {"ship_probability": masks, "has_ship": has_ship}


def _copy_validation(template: WholeImageValidation, callbacks) -> WholeImageValidation:
    """A fresh validation callback for one trial, drawing images into the trial's TensorBoard."""
    tensorboard = next((c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)), None)
    return WholeImageValidation(
        template.table,
        template.input_config,
        template.postprocess,
        template.batch_size,
        image_log_dir=tensorboard.log_dir if tensorboard is not None else template.image_log_dir,
        images_to_log=len(template.logged_positions),
    )
