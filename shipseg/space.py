"""The search space over the ship U-Net, and the ``keras_tuner.HyperModel`` that samples it.

Sections:
    1. ``Dimension`` and ``DEFAULT_SPACE``: every hyperparameter, its default range, and
       command-line overrides (``search_space``).
    2. ``ShipUNetHyperModel``: ``build`` samples a configuration and calls
       ``shipseg.unet.build_unet``; ``fit`` validates each epoch on whole images
       (``shipseg.validation.WholeImageValidation``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import keras_tuner
import numpy as np

from shipseg import encoders
from shipseg.losses import PIXEL_LOSSES
from shipseg.unet import (
    MAX_LEVELS,
    MIN_LEVELS,
    build_unet,
    compile_unet,
    has_ship_head,
)
from shipseg.validation import WholeImageValidation

# ---------------------------------------------------------------------------------------------
# 1. The search space
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


# The encoder of a search given pretrained weights and no ``encoder`` override: the one the
# real-data recipe measured (docs/results.md) and whose ImageNet file ../shared/weights holds.
PRETRAINED_DEFAULT = "mobilenet_v2"


def search_space(overrides: Sequence[str] = (), pretrained: bool = False) -> tuple[Dimension, ...]:
    """The default search space with command-line overrides applied.

    Args:
        overrides: ``name=value`` (fix), ``name=a,b`` (choices) or ``name=low:high`` (range).
        pretrained: Pretrained weights were given: the encoder is ``PRETRAINED_DEFAULT`` unless
            an override names it (weights for no pretrained encoder would be a silent no-op).

    Raises:
        ValueError: For an unknown name, a malformed override or a value out of bounds.
    """
    space = {dimension.name: dimension for dimension in DEFAULT_SPACE}
    if pretrained:
        space["encoder"] = space["encoder"].parse(PRETRAINED_DEFAULT)
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
# 2. The HyperModel
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
