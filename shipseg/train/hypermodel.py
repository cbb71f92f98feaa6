"""``ShipUNetHyperModel``: the search space made into a trainable, validated ship U-Net.

Keras Tuner calls ``build`` once per trial (and per repeated execution) with sampled values,
then ``fit``; ``train.py`` calls both with fixed values (``space.fixed_hyperparameters``), so a
searched configuration and its retraining go through one code path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import keras_tuner
import numpy as np

from shipseg.core import runtime
from shipseg.model import encoders
from shipseg.model.space import DEFAULT_SPACE, Dimension
from shipseg.model.unet import build_unet, compile_unet, has_ship_head
from shipseg.train.validation import WholeImageValidation


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
            a file (see ``shipseg.model.encoders.check_weights``).
        mixed_precision: Build under Keras's ``mixed_float16`` policy (float16 compute, float32
            weights and outputs): the speed of recent GPUs' tensor cores.
        jit_compile: Compile the training step with XLA.
    """

    def __init__(
        self,
        space: Sequence[Dimension] = DEFAULT_SPACE,
        validation: WholeImageValidation | None = None,
        images_per_epoch: int = 512,
        seed: int = 0,
        max_parameters: int | None = None,
        encoder_weights: str = "none",
        mixed_precision: bool = False,
        jit_compile: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mixed_precision = mixed_precision
        self.jit_compile = jit_compile
        self.encoder_weights = encoder_weights
        self.space = tuple(space)
        self.validation = validation
        self.images_per_epoch = images_per_epoch
        self.seed = seed
        self.max_parameters = max_parameters
        self.builds = 0

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        """Builds and compiles the U-Net that ``hp``'s values describe.

        Which hyperparameter drives which part (``shipseg.model.space.DEFAULT_SPACE``):

        * ``encoder``: the U-Net's own encoder or a pretrained ``keras.applications`` one
          (its initial weights: this HyperModel's ``encoder_weights``);
        * ``levels``, ``base_filters``: the depth (poolings) and the first level's width, the
          filters doubling per level; ``dropout``, ``batch_norm``: inside each block;
        * ``upsampling``: the decoder's transposed convolutions or bilinear resizing;
        * ``ship_loss_weight``: above 0 adds the image-level ship head and weighs its loss;
        * ``learning_rate``: Adam's step; ``pixel_loss``, ``pixel_weight``: the loss, a mix
          ``w * pixel + (1 - w) * dice`` (``shipseg.model.losses``).

        ``batch_size`` and ``encoder_frozen_epochs`` are read by ``fit``. Each build seeds the
        initialisation with the next seed of a fixed sequence.

        Args:
            hp: The trial's hyperparameters (sampled by Keras Tuner, or fixed by ``train.py``).

        Returns:
            The compiled model.

        Raises:
            keras_tuner.errors.FailedTrialError: When the model has more weights than
                ``max_parameters``.
        """
        values = {dimension.name: dimension.define(hp) for dimension in self.space}
        runtime.set_precision(self.mixed_precision)
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
            jit_compile=self.jit_compile,
        )
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, x, *args, **kwargs):
        """Trains on the unbatched stream ``x`` with the trial's batch size.

        Args:
            hp: The trial's hyperparameters: ``batch_size`` and ``encoder_frozen_epochs``.
            model: The model ``build`` returned for these hyperparameters.
            x: An endless, unbatched ``tf.data`` stream of ``(image, mask)`` training crops.
            *args: Passed on to ``keras.Model.fit``.
            **kwargs: Passed on to ``keras.Model.fit`` (``epochs``, ``callbacks``...); the
                validation, NaN and freezing callbacks are added to ``callbacks``. One is
                this method's own: ``image_scores_path``, where the validation writes each
                image's scores at the best epoch (see ``WholeImageValidation``), and
                ``image_scores_best``, the score an earlier execution's file already holds.

        Returns:
            The ``History`` of ``keras.Model.fit``.

        Raises:
            keras_tuner.errors.FailedTrialError: When the loss becomes NaN or memory runs out.
        """
        import tensorflow as tf

        batch_size = hp.get("batch_size")
        scores_file = kwargs.pop("image_scores_path", None), kwargs.pop("image_scores_best", None)
        callbacks = self._callbacks(hp, model, list(kwargs.pop("callbacks", [])), scores_file)
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

    def _callbacks(self, hp, model: keras.Model, callbacks: list, scores_file: tuple) -> list:
        """The fit's callbacks: freezing, validation and the NaN stop before the caller's."""
        if self.validation is not None:
            callbacks.insert(0, _copy_validation(self.validation, callbacks, *scores_file))
        callbacks.insert(1 if self.validation is not None else 0, keras.callbacks.TerminateOnNaN())
        if encoders.has_encoder(model) and hp.get("encoder_frozen_epochs") > 0:
            callbacks.insert(0, encoders.FreezeEncoder(hp.get("encoder_frozen_epochs")))
        return callbacks


def _with_ship_targets(images, masks):
    """Targets for a model with a ship head: the mask, and whether the crop holds a ship pixel."""
    import tensorflow as tf

    has_ship = tf.reduce_max(masks, axis=[1, 2])
    return images, {"ship_probability": masks, "has_ship": has_ship}


def _copy_validation(
    template: WholeImageValidation,
    callbacks: list,
    image_scores_path: str | None,
    image_scores_best: float | None,
) -> WholeImageValidation:
    """A fresh validation callback for one trial, drawing images into the trial's TensorBoard."""
    tensorboard = next((c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)), None)
    validation = WholeImageValidation(
        template.table,
        template.input_config,
        template.postprocess,
        template.batch_size,
        image_log_dir=tensorboard.log_dir if tensorboard is not None else template.image_log_dir,
        images_to_log=len(template.logged_positions),
        monitor=template.monitor,
        image_scores_path=image_scores_path or template.image_scores_path,
    )
    if image_scores_best is not None:
        validation.best_monitored = image_scores_best
    return validation
