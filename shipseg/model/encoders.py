"""Pretrained U-Net encoders: ``keras.applications`` backbones cut at their named stages.

Every strong entry of the Airbus competition put an ImageNet-pretrained encoder under its
U-Net. ``build_encoder`` turns MobileNetV2, EfficientNetB0 or ResNet50 into the encoder half of
``unet.build_unet``: a sub-model named ``"encoder"`` from RGB images in 0-255 to the
features at strides 2, 4, ... (the skip connections) and the deepest one used (the
bottleneck). ``levels`` picks how deep: 5 uses the whole backbone (stride 32), 3 stops at
stride 8 and leaves the rest out, which is most of the compute.

Each backbone expects its own input scaling. It is a layer inside the encoder
(``ImageNetPreprocessing``), so it is part of the saved model's configuration and whatever
loads the model (``train.py``, ``inference.py``, an exported SavedModel or TFLite file) repeats
it; EfficientNet scales its input itself.

This machine has no internet: ``--encoder-weights imagenet`` needs the files in Keras's cache
(``check_weights`` says where) or ``--encoder-weights PATH``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import urllib.error
import warnings
from pathlib import Path

import keras
from keras import layers

from shipseg.core.errors import UserError

PLAIN = "unet"  # the U-Net's own encoder, trained from scratch (unet._encoder)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A ``keras.applications`` network and where a U-Net taps it.

    Attributes:
        application: The constructor's name in ``keras.applications``.
        stages: Layer names of the outputs at strides 2, 4, 8, 16 and 32 (segmentation_models'
            choices).
        preprocessing: ``keras.applications.imagenet_utils.preprocess_input`` mode for 0-255
            RGB input, or ``"none"`` when the network scales its input itself.
    """

    application: str
    stages: tuple[str, ...]
    preprocessing: str


BACKBONES = {
    "mobilenet_v2": Backbone(
        "MobileNetV2",
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
            "out_relu",
        ),
        "tf",
    ),
    "efficientnet_b0": Backbone(
        "EfficientNetB0",
        (
            "block2a_expand_activation",
            "block3a_expand_activation",
            "block4a_expand_activation",
            "block6a_expand_activation",
            "top_activation",
        ),
        "none",
    ),
    "resnet50": Backbone(
        "ResNet50",
        (
            "conv1_relu",
            "conv2_block3_out",
            "conv3_block4_out",
            "conv4_block6_out",
            "conv5_block3_out",
        ),
        "caffe",
    ),
}
ENCODERS = (PLAIN, *BACKBONES)
WEIGHT_CHOICES = "imagenet|none|PATH"


@keras.saving.register_keras_serializable(package="shipseg")
class ImageNetPreprocessing(layers.Layer):
    """A backbone's input scaling, as a layer: ``imagenet_utils.preprocess_input(x, mode)``.

    ``tf``: to [-1, 1] (MobileNetV2); ``caffe``: RGB to BGR minus the ImageNet mean (ResNet50).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):  # noqa: D102
        return keras.applications.imagenet_utils.preprocess_input(images, mode=self.mode)

    def get_config(self) -> dict:  # noqa: D102
        return {**super().get_config(), "mode": self.mode}


def keras_weights(weights: str | None) -> str | None:
    """``--encoder-weights`` as ``keras.applications`` takes it: None, "imagenet" or a path."""
    return None if weights in (None, "none") else weights


def resolve_weights(weights: str) -> str:
    """``--encoder-weights`` as recorded in a run's configuration: a file as an absolute path."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).resolve())


def build_encoder(name: str, levels: int, weights: str | None = None) -> keras.Model:
    """The encoder sub-model: 0-255 RGB images to ``levels - 1`` skips and the bottleneck.

    Args:
        name: A key of ``BACKBONES``.
        levels: 2 to 5: the bottleneck is the backbone's stage at stride ``2 ** levels``.
        weights: ``"imagenet"``, ``"none"`` (or None) or the path of a weights file for the
            backbone without its classifier (``include_top=False``).

    Returns:
        A ``keras.Model`` named ``"encoder"`` with outputs at strides 2, ..., ``2 ** levels``.
    """
    backbone = BACKBONES[name]
    inputs = keras.Input((None, None, 3), name="encoder_image")
    x = inputs
    if backbone.preprocessing != "none":
        x = ImageNetPreprocessing(backbone.preprocessing, name=f"{name}_preprocessing")(x)
    constructor = getattr(keras.applications, backbone.application)
    with warnings.catch_warnings():
        # MobileNetV2 warns that inputs of any size get its 224 x 224 ImageNet weights: they
        # are the same weights (the network is convolutional up to its classifier).
        warnings.simplefilter("ignore", UserWarning)
        network = constructor(include_top=False, weights=keras_weights(weights), input_tensor=x)
    outputs = [network.get_layer(stage).output for stage in backbone.stages[:levels]]
    encoder = keras.Model(inputs, outputs, name="encoder")
    set_trainable(encoder, True)
    return encoder


def set_trainable(encoder: keras.Model, trainable: bool) -> None:
    """Freezes or unfreezes ``encoder``'s weights, keeping its batch normalisation frozen.

    A frozen ``BatchNormalization`` keeps ImageNet's statistics and runs in inference mode
    (Keras 3), which is Keras's own fine-tuning advice: batches of 8 crops, most of them sea,
    give noisy statistics, and a trained encoder re-estimating them lost what ImageNet taught
    it (validation Dice 0.66 after 2 epochs, 0.41-0.48 in the next six; docs/results.md).
    Keras's ``trainable`` setter reaches every sub-layer, so unfreezing re-freezes them here.
    """
    encoder.trainable = trainable
    for layer in _sublayers(encoder):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def _sublayers(model: keras.Model):
    """Every layer inside ``model``, nested models included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _sublayers(layer)


def check_weights(names: list[str] | tuple[str, ...], weights: str) -> None:
    """Checks, before any training, that every pretrained encoder in ``names`` gets ``weights``.

    Builds each once, which finds (or downloads) the ImageNet files and loads a PATH.

    Raises:
        UserError: One line naming the file and what to do: no network for ``imagenet``, a
            PATH that does not exist, fits no backbone, or is offered to several backbones.
    """
    pretrained = [name for name in names if name in BACKBONES]
    if not pretrained or weights == "none":
        return
    if weights != "imagenet":
        _check_weights_file(Path(weights), pretrained)
    for name in pretrained:
        try:
            build_encoder(name, 5, weights)
        except Exception as error:  # noqa: BLE001 - Keras raises bare Exception offline
            raise _weights_error(name, weights, error) from None


def _check_weights_file(path: Path, pretrained: list[str]) -> None:
    if not path.is_file():
        raise UserError(f"{path}: --encoder-weights file not found (expected {WEIGHT_CHOICES})")
    if "efficientnet_b0" in pretrained:
        # Keras adds EfficientNet's ImageNet input scaling (a Rescaling after its
        # Normalization) only when built with weights="imagenet": from a file, ImageNet
        # weights would see inputs on another scale, silently.
        cache = _keras_cache() / "efficientnetb0_notop.h5"
        raise UserError(
            f"{path}: efficientnet_b0 takes ImageNet weights only as --encoder-weights imagenet "
            f"(Keras builds its input scaling only then); put the file at {cache} instead"
        )
    if len(pretrained) > 1:
        raise UserError(
            f"{path}: one weights file cannot serve the encoders {', '.join(pretrained)}; "
            f"pick one with --hp encoder={pretrained[0]}"
        )


def _keras_cache() -> Path:
    """Where ``keras.utils.get_file`` keeps downloaded weights: ``$KERAS_HOME/models``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _weights_error(name: str, weights: str, error: Exception) -> UserError:
    """The one-line message for weights that cannot be had."""
    application = BACKBONES[name].application
    if weights != "imagenet":
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return UserError(f"{weights}: not weights for {name} ({application}, no top): {reason}")
    url = re.search(r"https?://\S+?\.h5", str(error))
    file_name = url.group(0).rsplit("/", 1)[-1] if url else f"{application}'s no-top .h5 file"
    cache = _keras_cache()
    offline = isinstance(error, urllib.error.URLError) or "URL fetch failure" in str(error)
    cause = "could not be downloaded (no network?)" if offline else f"failed to load ({error})"
    source = f" from {url.group(0)}" if url else ""
    return UserError(
        f"{cache / file_name}: the ImageNet weights of {name} are not there and {cause}; "
        f"put the file there, or download it{source} and pass --encoder-weights PATH "
        "(or --encoder-weights none to train from scratch)"
    )


def has_encoder(model: keras.Model) -> bool:
    """Whether ``model`` has a pretrained encoder (a sub-model named ``"encoder"``)."""
    return any(layer.name == "encoder" for layer in model.layers)


class FreezeEncoder(keras.callbacks.Callback):
    """Keeps the encoder's weights fixed for the first ``epochs`` epochs, then trains them too.

    The usual fine-tuning recipe: a decoder that starts from random weights sends large, noisy
    gradients into the pretrained encoder until it has learnt something; freezing the encoder
    meanwhile keeps what ImageNet taught it. The encoder's batch normalisation stays frozen
    throughout (``set_trainable``). Unfreezing starts a fresh optimizer at the
    current learning rate: Adam's bias correction follows the global step, so moments that
    start at zero 1,000 steps in would move the encoder by up to 5 times the learning rate
    (6.5 times later in training).
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):  # noqa: D102
        encoder = self.model.get_layer("encoder")
        frozen = epoch < self.epochs
        if encoder.trainable != frozen:
            return  # already as this epoch wants it
        with self.model.distribute_strategy.scope():
            if frozen:
                if not self.model.optimizer.built:  # before freezing: it must know every weight
                    self.model.optimizer.build(self.model.trainable_variables)
                set_trainable(encoder, False)
            else:
                set_trainable(encoder, True)
                self.model.optimizer = _fresh_optimizer(self.model.optimizer)
                self.model.optimizer.build(self.model.trainable_variables)
        self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):  # noqa: D102
        set_trainable(self.model.get_layer("encoder"), True)


@contextlib.contextmanager
def unfrozen(model: keras.Model):
    """``model`` with its encoder trainable for the time of the block (saving a checkpoint).

    A model saved in a frozen epoch would otherwise load with a frozen encoder, and with an
    optimizer built for fewer weights than it saved. The traced training step is unchanged.
    """
    encoder = model.get_layer("encoder") if has_encoder(model) else None
    if encoder is None or encoder.trainable:
        yield model
        return
    set_trainable(encoder, True)
    try:
        yield model
    finally:
        set_trainable(encoder, False)


def _fresh_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """A new optimizer of the same kind at ``optimizer``'s current learning rate."""
    config = optimizer.get_config()
    config["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    return optimizer.__class__.from_config(config)
