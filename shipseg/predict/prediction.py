"""The network on whole images: padded batches in, probability maps and ship labels out.

``predict_table`` streams a table of images through a model (tiling none, padding to a
multiple of 32 so every U-Net depth fits); ``score_table`` and ``evaluate_model`` turn the
predictions into ``shipseg.scoring.metrics``'s scores.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd

from shipseg.data import inputs
from shipseg.data.rle import ships_to_label_image
from shipseg.scoring.metrics import (
    DEFAULT_POSTPROCESS,
    PostprocessConfig,
    Scoreboard,
    bootstrap_intervals,
    image_has_ships,
    ungated_ships,
)

# U-Nets of up to 5 levels halve the image 5 times: inputs are padded to a multiple of this.
SIZE_MULTIPLE = 32
# Images per forward pass on a CPU: on two cores a larger batch buys no throughput (the
# service's one-image batches beat inference.py's batches of 2, docs/benchmarks.md).
CPU_BATCH = 2


def largest_batch(fits: Callable[[int], bool], limit: int = 32) -> int:
    """The largest power of two up to ``limit`` for which ``fits(n)`` holds; 1 at least.

    Args:
        fits: Whether a forward pass of ``n`` images fits in the device's memory.
        limit: The largest batch worth having (beyond it a GPU gains little throughput).
    """
    size = 1
    while size * 2 <= limit and fits(size * 2):
        size *= 2
    return size


def device_batch_size(model, side: int = 768, cpu_batch: int = CPU_BATCH, limit: int = 32) -> int:
    """Images per forward pass for the device the model runs on, sized to its memory.

    On a CPU, ``cpu_batch``. On a GPU, half the largest power-of-two batch of ``side`` x
    ``side`` images whose forward pass fits in the GPU's memory, found by trying: the half
    leaves room for larger scenes' tiles and for the allocator's fragments.

    Args:
        model: A Keras model (other models, such as TFLite's, run on the CPU).
        side: The images' side in pixels (the Airbus tiles: 768).
        cpu_batch: The batch on a CPU.
        limit: The largest batch tried.
    """
    import keras
    import tensorflow as tf

    if not isinstance(model, keras.Model) or not tf.config.list_physical_devices("GPU"):
        return cpu_batch

    def fits(size: int) -> bool:
        try:
            model.predict_on_batch(np.zeros((size, side, side, 3), np.float32))
        except (tf.errors.ResourceExhaustedError, tf.errors.InternalError, MemoryError):
            return False  # cuDNN reports some allocation failures as internal errors
        return True

    return max(1, largest_batch(fits, limit) // 2)


def pad_to_multiple(images: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
    """Pads a batch ``(n, h, w, c)`` at the bottom and right to sides divisible by ``multiple``."""
    height, width = images.shape[1:3]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return images
    return np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


class Prediction(NamedTuple):
    """One whole image's prediction, as ``predict_table`` yields it.

    Attributes:
        position: The image's row position in the table.
        probabilities: ``(h, w)`` float32 pixel probabilities at the original resolution.
        ship_probability: The ship head's probability that the image holds a ship; None for a
            model without a head.
        image: The decoded ``(h, w, 3)`` image (float, 0-255) when asked for, else None.
    """

    position: int
    probabilities: np.ndarray
    ship_probability: float | None = None
    image: np.ndarray | None = None


# Each Keras model's forward pass as a ``tf.function`` traced once per input shape.
_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_function(model):
    """``model`` called in inference mode, compiled once per input shape it meets.

    Not ``predict_on_batch``: Keras traces that with ``reduce_retracing``, so after two image
    sizes it traces one graph for any height and width, which a U-Net with bilinear
    up-sampling cannot build (``UpSampling2D`` needs its input's size: measured, the second
    image size of a service or of a folder of mixed sizes failed). A TFLite model predicts
    with its own ``predict_on_batch``.
    """
    import keras

    if not isinstance(model, keras.Model):
        return model.predict_on_batch
    if model not in _FORWARD:
        import tensorflow as tf

        _FORWARD[model] = tf.function(
            lambda images: model(images, training=False), reduce_retracing=False
        )
    return _FORWARD[model]


def _forward(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward pass: ``(n, h, w)`` probabilities, and ``(n,)`` ship probabilities or None."""
    output = forward_function(model)(images)
    if isinstance(output, dict):
        return (
            np.array(output["ship_probability"])[..., 0],  # copies: TTA adds to them
            np.array(output["has_ship"])[:, 0],
        )
    return np.array(output)[..., 0], None


def predict_batch(
    model, images: np.ndarray, flip_tta: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Ship probabilities for a batch of images of any size.

    Args:
        model: A U-Net from ``unet.build_unet``.
        images: ``(n, h, w, 3)`` float RGB in 0-255.
        flip_tta: Also predict the left-right and up-down flips and average.

    Returns:
        ``(n, h, w)`` float32 pixel probabilities, and the ``(n,)`` image-level ship
        probabilities of a model with a ship head (None without one).
    """
    height, width = images.shape[1:3]
    padded = pad_to_multiple(np.asarray(images, dtype=np.float32))
    probabilities, ship = _forward(model, padded)
    if flip_tta:
        for axis in (1, 2):
            flipped, flipped_ship = _forward(model, np.flip(padded, axis=axis))
            probabilities += np.flip(flipped, axis=axis)
            if ship is not None:
                ship += flipped_ship
        probabilities /= 3
        if ship is not None:
            ship /= 3
    return probabilities[:, :height, :width], ship


def predict_table(
    model,
    table: pd.DataFrame,
    input_config: inputs.InputConfig | None = None,
    batch_size: int = 4,
    flip_tta: bool = False,
    with_images: bool = False,
) -> Iterator[Prediction]:
    """Predicts whole images of a table, streaming: one image's prediction at a time.

    The one prediction loop of the project: validation, post-processing tuning, test scores,
    example figures and inference all read their probabilities from here. In resize mode the
    network sees the image resized as in training and its prediction is scaled back to the
    original size, so scores are always at the original resolution.

    Args:
        model: The trained U-Net.
        table: Rows with a ``path`` column.
        input_config: The training input settings (crop or resize).
        batch_size: Images per forward pass.
        flip_tta: Flip test-time augmentation.
        with_images: Also yield the decoded image (saves reading it again for an overlay).

    Yields:
        A ``Prediction`` per image that decodes (images that fail to decode are skipped); its
        ``image`` is None in resize mode or unless ``with_images``.
    """
    resized = input_config is not None and input_config.mode == "resize"
    for positions, images, shapes in inputs.evaluation_dataset(table, input_config, batch_size):
        images = images.numpy()
        probabilities, ship = predict_batch(model, images, flip_tta)
        for index, (position, shape) in enumerate(
            zip(positions.numpy(), shapes.numpy(), strict=True)
        ):
            probability = _at_original_size(probabilities[index], tuple(shape), resized)
            height, width = probability.shape
            image = images[index, :height, :width] if with_images and not resized else None
            yield Prediction(
                int(position), probability, None if ship is None else float(ship[index]), image
            )


def _at_original_size(probability: np.ndarray, shape: tuple[int, int], resized: bool):
    """A padded or resized prediction cut or scaled back to the image's ``(height, width)``."""
    height, width = int(shape[0]), int(shape[1])
    if not resized:
        return probability[:height, :width]
    import tensorflow as tf

    return tf.image.resize(probability[..., None], [height, width]).numpy()[..., 0]


def predict_images(
    model,
    images: list[np.ndarray],
    input_config: inputs.InputConfig | None = None,
    flip_tta: bool = False,
) -> list[Prediction]:
    """``predict_table`` for images already decoded (``inputs.decode_image_bytes``), as one batch.

    The service's path: the same resizing, padding and cutting back as ``predict_table``, so an
    image gives the same probabilities whichever way it arrives. Images of different sizes are
    zero-padded to the largest at the bottom and right, as ``predict_table``'s batches are.

    Args:
        model: The trained U-Net (Keras or TFLite).
        images: Decoded ``(h, w, 3)`` float RGB images in 0-255, of any sizes.
        input_config: The training's input settings (resized in resize mode); None: as is.
        flip_tta: Average each prediction over its left-right and up-down flips (3 passes).

    Returns:
        One ``Prediction`` per image, in order, its probabilities at the image's own size.
    """
    prepared = [np.asarray(inputs.evaluation_image(image, input_config)) for image in images]
    height = max(image.shape[0] for image in prepared)
    width = max(image.shape[1] for image in prepared)
    batch = np.zeros((len(prepared), height, width, 3), np.float32)
    for index, image in enumerate(prepared):
        batch[index, : image.shape[0], : image.shape[1]] = image
    probabilities, ship = predict_batch(model, batch, flip_tta)
    resized = input_config is not None and input_config.mode == "resize"
    return [
        Prediction(
            index,
            _at_original_size(probabilities[index], image.shape[:2], resized),
            None if ship is None else float(ship[index]),
        )
        for index, image in enumerate(images)
    ]


def labelled_predictions(
    model,
    table: pd.DataFrame,
    input_config: inputs.InputConfig | None = None,
    flip_tta: bool = False,
    batch_size: int = 4,
) -> Iterator[tuple[Prediction, np.ndarray]]:
    """Each image's prediction with its true label image (``predict_table`` + the table's ships).

    Args:
        model: The trained U-Net (Keras or TFLite).
        table: Labelled images: ``path`` and ``rles`` (one RLE per ship) columns.
        input_config: The training's input settings; None: images as they are.
        flip_tta: Average each prediction over flips (3 passes an image).
        batch_size: Images per forward pass (memory against speed).

    Yields:
        ``(prediction, truth)``: truth is the ``(h, w)`` label image, one label per ship.
    """
    for prediction in predict_table(model, table, input_config, batch_size, flip_tta):
        rles = table.rles.iloc[prediction.position]
        yield prediction, ships_to_label_image(rles, prediction.probabilities.shape)


class ScoredImage(NamedTuple):
    """One image through the whole scoring path: prediction, truth, ships, gate.

    Attributes:
        prediction: The network's output for the image.
        truth: True label image (one label per ship).
        ungated: Predicted label image before the image-level gate.
        gate_open: Whether the gate keeps the image's predicted ships.
    """

    prediction: Prediction
    truth: np.ndarray
    ungated: np.ndarray
    gate_open: bool

    @property
    def predicted(self) -> np.ndarray:
        """The predicted label image after the gate (what is scored and submitted)."""
        return self.ungated if self.gate_open else np.zeros_like(self.ungated)


def score_table(
    model,
    table: pd.DataFrame,
    input_config: inputs.InputConfig | None = None,
    postprocess: PostprocessConfig = DEFAULT_POSTPROCESS,
    batch_size: int = 4,
) -> Iterator[ScoredImage]:
    """The one scoring path: predict whole images, label truth and ships, apply the gate.

    Validation, test evaluation and the example figures read it; post-processing tuning reads
    ``labelled_predictions`` (it tries many settings on the same predictions). Components are
    labelled once per image: the gate only decides whether they are kept.

    Args:
        model: The trained U-Net (Keras or TFLite).
        table: Labelled images: ``path`` and ``rles`` (one RLE per ship) columns.
        input_config: The training's input settings; None: images as they are.
        postprocess: Threshold, smallest ship, outline, gate and flip TTA to apply.
        batch_size: Images per forward pass (memory against speed).

    Yields:
        A ``ScoredImage`` per image that decodes, in the table's order.
    """
    for prediction, truth in labelled_predictions(
        model, table, input_config, postprocess.flip_tta, batch_size
    ):
        probabilities = prediction.probabilities
        ungated = ungated_ships(probabilities, postprocess)
        gate_open = image_has_ships(probabilities, postprocess, prediction.ship_probability)
        yield ScoredImage(prediction, truth, ungated, gate_open)


def ship_score(prediction: Prediction) -> float:
    """An image's ship evidence: the ship head's probability, else the top pixel probability."""
    if prediction.ship_probability is not None:
        return prediction.ship_probability
    return float(prediction.probabilities.max(initial=0.0))


def scoreboard_for(
    model,
    table: pd.DataFrame,
    input_config: inputs.InputConfig | None = None,
    postprocess: PostprocessConfig = DEFAULT_POSTPROCESS,
    batch_size: int = 4,
) -> Scoreboard:
    """Every image of a table scored (``score_table``), each image's F2 kept in order.

    Args:
        model: The trained U-Net (Keras, TFLite or anything with ``predict_on_batch``).
        table: Labelled images: ``path`` and ``rles`` columns.
        input_config: The training's input settings; None: images as they are.
        postprocess: The post-processing scored.
        batch_size: Images per forward pass.
    """
    scoreboard = Scoreboard()
    for scored in score_table(model, table, input_config, postprocess, batch_size):
        scoreboard.add(scored.truth, scored.predicted, ship_score(scored.prediction))
    return scoreboard


def evaluate_model(
    model,
    table: pd.DataFrame,
    input_config: inputs.InputConfig | None = None,
    postprocess: PostprocessConfig = DEFAULT_POSTPROCESS,
    batch_size: int = 4,
    intervals: bool = False,
) -> dict:
    """Scores a model on whole images of a table (see ``Scoreboard.results``).

    With ``intervals``, adds ``"intervals"``: 95 % bootstrap intervals over the images for the
    F2, the no-ship baseline and the gain over it (see ``bootstrap_intervals``).

    Args:
        model: The trained U-Net (Keras or TFLite).
        table: Labelled images: ``path`` and ``rles`` (one RLE per ship) columns.
        input_config: The training's input settings; None: images as they are.
        postprocess: The post-processing scored (tuned on validation images, for a test).
        batch_size: Images per forward pass (memory against speed).
        intervals: Also bootstrap the intervals (for test scores: costs a few seconds).

    Returns:
        ``Scoreboard.results``, with ``"intervals"`` when asked for and any image was scored.
    """
    scoreboard = scoreboard_for(model, table, input_config, postprocess, batch_size)
    results = scoreboard.results()
    if intervals and scoreboard.images:
        results["intervals"] = bootstrap_intervals(
            scoreboard.f2_scores, scoreboard.baseline_f2_scores
        )
    return results
