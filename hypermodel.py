"""The U-Net, its losses and metrics, and the search space over them.

Sections:
    1. Losses and metrics, registered with Keras so that a saved ``.keras`` model reloads in a
       fresh process after ``import hypermodel``, without ``custom_objects``.
    2. ``build_unet``: a pure factory from plain arguments.
    3. The search space: every hyperparameter, its default range, and command-line overrides.
    4. ``WholeImageValidation``: the per-epoch validation on whole images (pixel Dice, IoU and
       the competition's instance F2), with predicted masks in TensorBoard.
    5. ``ShipUNetHyperModel``: the ``keras_tuner.HyperModel`` tying them together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import keras_tuner
import numpy as np
import pandas as pd
from keras import layers, ops

import evaluation
import pipeline

SERIALIZATION_PACKAGE = "ships"
MIN_LEVELS, MAX_LEVELS = 2, 5

# ---------------------------------------------------------------------------------------------
# 1. Losses and metrics
# ---------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
def bce_loss(y_true, y_pred):
    """Binary cross-entropy averaged over pixels."""
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
def focal_loss(y_true, y_pred, gamma: float = 2.0):
    """Binary focal loss averaged over pixels: BCE scaled by ``(1 - p_true) ** gamma``.

    Easy background pixels (the vast majority) contribute almost nothing, so the rare ship
    pixels and hard sea clutter drive the gradient.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    y_pred = ops.clip(y_pred, keras.backend.epsilon(), 1 - keras.backend.epsilon())
    p_true = y_true * y_pred + (1 - y_true) * (1 - y_pred)
    return ops.mean(-((1 - p_true) ** gamma) * ops.log(p_true))


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
def dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice loss over the whole batch: ``1 - (2 |Y P| + s) / (|Y| + |P| + s)``.

    Summed over the batch rather than per image, so crops without ships do not make the loss
    undefined or dominate it.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred)
    return 1 - (2 * intersection + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


PIXEL_LOSSES = {"bce": bce_loss, "focal": focal_loss}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class WeightedLoss(keras.losses.Loss):
    """``w * pixel_loss + (1 - w) * dice_loss``, the pixel loss being BCE or focal.

    Args:
        pixel_loss: ``"bce"`` or ``"focal"``.
        pixel_weight: ``w`` in [0, 1]; 1 is the pixel loss alone, 0 is Dice alone.
    """

    def __init__(
        self, pixel_loss: str = "bce", pixel_weight: float = 0.5, name: str | None = None, **kwargs
    ):
        if pixel_loss not in PIXEL_LOSSES:
            raise ValueError(
                f"pixel_loss must be one of {sorted(PIXEL_LOSSES)}, got {pixel_loss!r}"
            )
        if not 0 <= pixel_weight <= 1:
            raise ValueError(f"pixel_weight must be in [0, 1], got {pixel_weight}")
        super().__init__(name=name or f"{pixel_weight:g}_{pixel_loss}_dice", **kwargs)
        self.pixel_loss = pixel_loss
        self.pixel_weight = float(pixel_weight)

    def call(self, y_true, y_pred):  # noqa: D102
        pixel = PIXEL_LOSSES[self.pixel_loss](y_true, y_pred)
        return self.pixel_weight * pixel + (1 - self.pixel_weight) * dice_loss(y_true, y_pred)

    def get_config(self):  # noqa: D102
        return {
            **super().get_config(),
            "pixel_loss": self.pixel_loss,
            "pixel_weight": self.pixel_weight,
        }


class _OverlapMetric(keras.metrics.Metric):
    """Accumulates intersection and pixel sums of thresholded predictions over an epoch."""

    def __init__(self, threshold: float = 0.5, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):  # noqa: D102
        y_true = ops.cast(y_true > 0.5, "float32")
        y_pred = ops.cast(y_pred > self.threshold, "float32")
        self.intersection.assign_add(ops.sum(y_true * y_pred))
        self.total.assign_add(ops.sum(y_true) + ops.sum(y_pred))

    def reset_state(self):  # noqa: D102
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):  # noqa: D102
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class DiceScore(_OverlapMetric):
    """Pixel Dice of predictions thresholded at ``threshold``, over all pixels seen (1 if none)."""

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs):
        super().__init__(threshold, name=name, **kwargs)

    def result(self):  # noqa: D102
        return ops.where(self.total > 0, 2 * self.intersection / ops.maximum(self.total, 1.0), 1.0)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class IoUScore(_OverlapMetric):
    """Pixel IoU of predictions thresholded at ``threshold``, over all pixels seen (1 if none)."""

    def __init__(self, threshold: float = 0.5, name: str = "iou", **kwargs):
        super().__init__(threshold, name=name, **kwargs)

    def result(self):  # noqa: D102
        union = self.total - self.intersection
        return ops.where(union > 0, self.intersection / ops.maximum(union, 1.0), 1.0)


# ---------------------------------------------------------------------------------------------
# 2. The U-Net factory
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

    Returns:
        An uncompiled ``keras.Model`` from RGB images in 0-255 (float) to one sigmoid channel
        (and the image's ship probability when ``ship_head``).
    """
    if input_size is not None:
        check_input_size(input_size, levels)
    elif not MIN_LEVELS <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be between {MIN_LEVELS} and {MAX_LEVELS}, got {levels}")
    if upsampling not in ("transpose", "resize"):
        raise ValueError(f"upsampling must be 'transpose' or 'resize', got {upsampling!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 255, name="scale_0_1")(inputs)

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
    has_ship = _ship_head(x) if ship_head else None

    for level in reversed(range(levels)):
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

    bias = math.log(ship_prior / (1 - ship_prior))
    outputs = layers.Conv2D(
        1,
        1,
        activation="sigmoid",
        dtype="float32",
        name="ship_probability",
        bias_initializer=keras.initializers.Constant(bias),
    )(x)
    if has_ship is not None:
        outputs = {"ship_probability": outputs, "has_ship": has_ship}
    return keras.Model(inputs, outputs, name=f"unet_{levels}x{base_filters}")


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
# 3. The search space
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
    """

    name: str
    kind: str
    values: tuple
    step: float | None = None
    log: bool = False
    limits: tuple | None = None
    help: str = ""

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
        return ",".join(
            str(value).lower() if isinstance(value, bool) else str(value) for value in self.values
        )

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
                if token not in self.values:
                    raise KeyError(token)
                return token
            except (ValueError, KeyError):
                raise ValueError(
                    f"{self.name}: {token!r} is not valid (allowed: {self.describe()})"
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
    Dimension("pixel_loss", "choice", ("bce", "focal"), help="pixel-wise part of the loss"),
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
)
# Hyperparameters added after searches were run: their value when a saved configuration lacks
# them (the model it describes had no such part).
ADDED_LATER = {"ship_loss_weight": 0.0}


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
    return tuple(space.values())


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run's results, recorded with every run."""
    import sys

    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_tuner": keras_tuner.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def fixed_hyperparameters(values: dict) -> keras_tuner.HyperParameters:
    """HyperParameters holding exactly ``values`` (for rebuilding a chosen configuration)."""
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        if not name.startswith("tuner/"):
            hp.Fixed(name, value)
    return hp


# ---------------------------------------------------------------------------------------------
# 4. Validation on whole images
# ---------------------------------------------------------------------------------------------


# Scoreboard results that are counts, not scores: kept out of the epoch's logs.
COUNTS = (
    "images",
    "f2_no_ship_baseline",
    "ship_images",
    "ship_images_found",
    "empty_images_with_ships",
)


class WholeImageValidation(keras.callbacks.Callback):
    """After each epoch, predicts whole validation images and adds ``val_*`` scores to the logs.

    Scores (see ``evaluation.Scoreboard``): ``val_dice``, ``val_dice_ship_images``,
    ``val_iou``, ``val_f2``, ``val_ship_accuracy``, ``val_ship_auc`` (how well the image-level
    evidence, the ship head or the top pixel, ranks ship images above empty ones) and
    ``val_f2_tuned`` (the F2 with the image-level threshold chosen on these images). They are computed on full-size images with
    the natural share of empty images, which crops cannot show. Because the values are added to
    the epoch's logs before later callbacks run, Keras Tuner, TensorBoard, checkpoints and
    early stopping all see them like any Keras metric.

    When a TensorBoard log directory is given, a few fixed validation images are drawn there
    each epoch with the true ships in green and the predicted ones in red.

    Args:
        table: Validation rows from ``pipeline.read_dataset``.
        input_config: The training input settings (resize mode is repeated here).
        postprocess: How probabilities become ships for the F2.
        batch_size: Images per forward pass.
        image_log_dir: TensorBoard directory for the mask images, or None.
        images_to_log: How many validation images to draw (ship images first).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        input_config: pipeline.InputConfig | None = None,
        postprocess: evaluation.PostprocessConfig = evaluation.DEFAULT_POSTPROCESS,
        batch_size: int = 4,
        image_log_dir: str | None = None,
        images_to_log: int = 4,
    ):
        super().__init__()
        self.table = table.reset_index(drop=True)
        self.input_config = input_config
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.image_log_dir = image_log_dir
        ship_first = self.table.sort_values(["ship_count", "ImageId"], ascending=[False, True])
        shown = list(ship_first.index[: max(images_to_log - 1, 0)])
        empty = self.table.index[self.table.ship_count == 0]
        if len(empty) and images_to_log:
            shown.append(empty[0])
        self.logged_positions = shown[:images_to_log]
        self.last_results: dict[str, float] = {}

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        scoreboard = evaluation.Scoreboard()
        drawn, gate = [], {"scores": [], "open": [], "closed": []}
        for prediction in evaluation.predict_table(
            self.model, self.table, self.input_config, self.batch_size, self.postprocess.flip_tta
        ):
            position, probabilities = prediction.position, prediction.probabilities
            truth = evaluation.true_labels_for(self.table.iloc[position], probabilities.shape)
            # Labelled once: the gate only decides whether these ships are kept.
            ungated = evaluation.split_ships(
                probabilities > self.postprocess.threshold, self.postprocess.min_ship_pixels
            )
            gate_open = evaluation.image_has_ships(
                probabilities, self.postprocess, prediction.ship_probability
            )
            predicted = ungated if gate_open else np.zeros_like(ungated)
            scoreboard.add(truth, predicted, evaluation.ship_score(prediction))
            gate["scores"].append(evaluation.ship_score(prediction))
            gate["open"].append(evaluation.image_f2(truth, ungated))
            gate["closed"].append(0.0 if truth.any() else 1.0)
            if position in self.logged_positions and self.image_log_dir:
                drawn.append((self.table.path[position], truth > 0, predicted > 0))
        self.last_results = scoreboard.results()
        if self.last_results["images"]:
            # What the model scores once train.py tunes its image-level threshold: the metric
            # that sees a better ship / no-ship decision, which a fixed 0.5 gate hides.
            self.last_results["f2_tuned"] = evaluation.best_gate(
                gate["scores"], gate["open"], gate["closed"]
            )[1]
        if logs is not None:
            for name, value in self.last_results.items():
                if name not in COUNTS:
                    logs[f"val_{name}"] = value
        if drawn:
            self._log_images(epoch, drawn)

    def _log_images(self, epoch: int, drawn) -> None:
        import tensorflow as tf

        pictures = [
            mask_overlay(pipeline.decode_image(path).numpy(), truth, predicted, max_side=256)
            for path, truth, predicted in drawn
        ]
        writer = tf.summary.create_file_writer(f"{self.image_log_dir}/masks")
        with writer.as_default():
            for index, picture in enumerate(pictures):
                tf.summary.image(
                    f"validation_image_{index}",
                    picture[None] / 255.0,
                    step=epoch,
                    description="green: true ships, red: predicted, yellow: both",
                )
        writer.close()


def mask_overlay(
    image: np.ndarray,
    truth: np.ndarray | None,
    predicted: np.ndarray | None,
    max_side: int | None = None,
    alpha: float = 0.55,
) -> np.ndarray:
    """Colours true ships green, predicted ships red (overlap yellow) over an RGB image.

    Args:
        image: ``(h, w, 3)`` RGB in 0-255.
        truth: Boolean mask of true ships, or None.
        predicted: Boolean mask of predicted ships, or None.
        max_side: Downscale the result so its longer side is at most this (ship pixels kept
            visible by taking the maximum over each block).
        alpha: Opacity of the colours.

    Returns:
        ``(h', w', 3)`` uint8 image.
    """
    nothing_drawn = (truth is None or not truth.any()) and (
        predicted is None or not predicted.any()
    )
    if nothing_drawn and not (max_side and max(image.shape[:2]) > max_side):
        return np.clip(image, 0, 255).astype(np.uint8)
    picture = np.asarray(image, dtype=np.float32).copy()
    colour = np.zeros_like(picture)
    if truth is not None:
        colour[..., 1] = truth * 255
    if predicted is not None:
        colour[..., 0] = predicted * 255
    painted = colour.max(axis=-1) > 0
    picture[painted] = (1 - alpha) * picture[painted] + alpha * colour[painted]
    if max_side and max(picture.shape[:2]) > max_side:
        from skimage.measure import block_reduce

        factor = math.ceil(max(picture.shape[:2]) / max_side)
        picture = block_reduce(picture, (factor, factor, 1), np.mean)
        # Thin ships would fade in the average: redraw every block that held a ship pixel.
        ship_blocks = block_reduce(painted, (factor, factor), np.max)
        block_colour = block_reduce(colour, (factor, factor, 1), np.max)
        picture[ship_blocks] = (1 - alpha) * picture[ship_blocks] + alpha * block_colour[
            ship_blocks
        ]
    return np.clip(picture, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# 5. The HyperModel
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
    """

    def __init__(
        self,
        space: Sequence[Dimension] = DEFAULT_SPACE,
        validation: WholeImageValidation | None = None,
        images_per_epoch: int = 512,
        seed: int = 0,
        max_parameters: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
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
