"""tf.data input: the pipeline from a table of images to the network's batches.

Training reads random crops at full resolution (most of them holding a ship pixel), flipped
and turned; evaluation reads whole images, decoded on a few threads.
How images become input is one ``InputConfig``, recorded with every run so that training,
evaluation and inference all repeat it. The table comes from ``shipseg.data.airbus``; the masks are
decoded from the same RLE strings, in the graph, so no mask is ever stored.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from shipseg.core.runtime import usable_cores


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How images become the network's input; recorded with every run so inference repeats it.

    Attributes:
        mode: ``"crop"`` trains on random crops at full resolution (the default: downscaling
            loses small ships); ``"resize"`` trains on whole images resized to ``size``.
        size: Crop size, or the side images are resized to.
        ship_crop_probability: In crop mode, the chance that a crop of a ship image is placed
            to contain a ship (otherwise it is placed uniformly).
        empty_image_fraction: Share of images without ships in each training batch (the data
            has about 78 %; the strongest entries trained with about 20 %).
        augment: Random flips and 90-degree rotations in training.
    """

    mode: str = "crop"
    size: int = 256
    ship_crop_probability: float = 0.9
    empty_image_fraction: float = 0.2
    augment: bool = True

    def __post_init__(self):
        if self.mode not in ("crop", "resize"):
            raise ValueError(f"input mode must be 'crop' or 'resize', got {self.mode!r}")
        if self.size < 8:
            raise ValueError(f"input size must be at least 8, got {self.size}")
        for name in ("ship_crop_probability", "empty_image_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def _tf():
    # TensorFlow takes seconds to import: the RLE and table functions do not need it.
    import tensorflow as tf

    return tf


def decode_image(path):
    """Reads an image file into a float32 RGB tensor (0-255), whatever its format or channels."""
    return decode_image_bytes(_tf().io.read_file(path))


def decode_image_bytes(data):
    """Decodes an encoded image (bytes) as ``decode_image`` decodes a file: the one decoder.

    The service decodes uploads here, so an image sent over HTTP gives the network the same
    pixels as the same file read by ``inference.py``.
    """
    return _tf().cast(decode_rgb(data), "float32")


def decode_rgb(data):
    """``decode_image_bytes`` as uint8 (a third of the memory, for scenes held whole)."""
    return _tf().io.decode_image(data, channels=3, expand_animations=False)


def evaluation_image(image, config: InputConfig | None):
    """A decoded image as whole-image prediction feeds it: resized as in training in resize mode."""
    if config is None or config.mode != "resize":
        return image
    return _tf().image.resize(image, [config.size, config.size], method="area")


def decode_mask(encoded_pixels, height, width):
    """TensorFlow twin of ``rle_decode`` for the union of an image's ship runs.

    Runs of different ships may come in any order, so unlike ``rle_decode`` this does not require
    sorted runs; overlapping pixels are simply set once.

    Args:
        encoded_pixels: A string tensor: the image's runs as space-separated ``start length``
            pairs (1-based starts, column-major as in the Kaggle CSV); empty for no ship.
        height: The image's height in pixels (a scalar tensor or int).
        width: The image's width in pixels (a scalar tensor or int).

    Returns:
        A ``float32`` tensor of shape ``(height, width, 1)``.
    """
    tf = _tf()
    values = tf.strings.to_number(tf.strings.split(encoded_pixels), out_type=tf.int64)
    runs = tf.reshape(values, [-1, 2])
    starts, lengths = runs[:, 0] - 1, runs[:, 1]
    run_offsets = tf.range(tf.reduce_sum(lengths)) - tf.repeat(
        tf.cumsum(lengths, exclusive=True), lengths
    )
    flat_indices = tf.repeat(starts, lengths) + run_offsets
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    flat = tf.scatter_nd(
        flat_indices[:, None], tf.ones_like(flat_indices, tf.float32), [height * width]
    )
    mask = tf.transpose(tf.reshape(tf.minimum(flat, 1.0), [width, height]))
    return mask[:, :, None]


def _load_example(path, encoded_pixels):
    tf = _tf()
    image = decode_image(path)
    shape = tf.shape(image)
    return image, decode_mask(encoded_pixels, shape[0], shape[1])


def _random_crop(image, mask, size: int, ship_probability: float, seed):
    """Crops ``size`` x ``size``; with ``ship_probability`` the crop contains a ship pixel."""
    tf = _tf()
    shape = tf.shape(image)
    # Images smaller than the crop are padded (never the case for Airbus data).
    image = tf.image.pad_to_bounding_box(
        image, 0, 0, tf.maximum(shape[0], size), tf.maximum(shape[1], size)
    )
    mask = tf.image.pad_to_bounding_box(
        mask, 0, 0, tf.maximum(shape[0], size), tf.maximum(shape[1], size)
    )
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    ship_pixels = tf.where(mask[:, :, 0] > 0)
    n_ship = tf.shape(ship_pixels, out_type=tf.int32)[0]
    want_ship = tf.logical_and(
        n_ship > 0, tf.random.stateless_uniform([], seeds[0]) < ship_probability
    )

    def around_ship():
        index = tf.random.stateless_uniform([], seeds[1], 0, tf.maximum(n_ship, 1), tf.int32)
        pixel = tf.cast(ship_pixels[tf.minimum(index, n_ship - 1)], tf.int32)
        shift = tf.random.stateless_uniform([2], seeds[2], 0, size, tf.int32)
        top = tf.clip_by_value(pixel[0] - shift[0], 0, height - size)
        left = tf.clip_by_value(pixel[1] - shift[1], 0, width - size)
        return top, left

    def anywhere():
        corner = tf.random.stateless_uniform([2], seeds[3], 0, tf.int32.max, tf.int32)
        return corner[0] % (height - size + 1), corner[1] % (width - size + 1)

    top, left = tf.cond(want_ship, around_ship, anywhere)
    return (
        image[top : top + size, left : left + size],
        mask[top : top + size, left : left + size],
    )


def _resize(image, mask, size: int):
    tf = _tf()
    image = tf.image.resize(image, [size, size], method="area")
    # A ship must survive the downscale wherever it covers half a pixel or more.
    mask = tf.cast(tf.image.resize(mask, [size, size], method="area") >= 0.5, tf.float32)
    return image, mask


def _augment(image, mask, seed):
    """Random horizontal flip and 0-3 quarter turns, applied identically to image and mask."""
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 2)
    stacked = tf.concat([image, mask], axis=-1)
    stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[0])
    turns = tf.random.stateless_uniform([], seeds[1], 0, 4, tf.int32)
    stacked = tf.image.rot90(stacked, turns)
    return stacked[:, :, :3], stacked[:, :, 3:]


# Images decoded at once for whole-image prediction: a JPEG of 768 x 768 takes about 3 ms, so
# a few threads keep up with a GPU; more would only compete with the network on a CPU.
DECODING_THREADS = min(4, usable_cores())


def _without_autotuning():
    options = _tf().data.Options()
    options.autotune.enabled = False
    return options


def _mixed_files(table: pd.DataFrame, empty_fraction: float, seed: int):
    """Endless shuffled ``(path, EncodedPixels)`` pairs: ship and empty images mixed."""
    tf = _tf()

    def stream(rows: pd.DataFrame, stream_seed: int):
        files = tf.data.Dataset.from_tensor_slices(
            (rows.path.to_numpy(str), rows.EncodedPixels.to_numpy(str))
        )
        return files.shuffle(len(rows), seed=stream_seed, reshuffle_each_iteration=True).repeat()

    with_ships, empty = table[table.ship_count > 0], table[table.ship_count == 0]
    if with_ships.empty and empty.empty:
        raise ValueError("training table is empty")
    if with_ships.empty or empty.empty or empty_fraction in (0.0, 1.0):
        use_empty = (empty_fraction > 0 and not empty.empty) or with_ships.empty
        return stream(empty if use_empty else with_ships, seed)
    return tf.data.Dataset.sample_from_datasets(
        [stream(with_ships, seed), stream(empty, seed + 1)],
        weights=[1 - empty_fraction, empty_fraction],
        seed=seed + 2,
    )


def _example(path, encoded_pixels, element_seed, config: InputConfig):
    """One training pair from one file: decoded, cropped or resized, augmented (in the graph)."""
    tf = _tf()
    image, mask = _load_example(path, encoded_pixels)
    crop_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
    if config.mode == "crop":
        image, mask = _random_crop(
            image, mask, config.size, config.ship_crop_probability, crop_seed
        )
    else:
        image, mask = _resize(image, mask, config.size)
    if config.augment:
        image, mask = _augment(image, mask, augment_seed)
    image.set_shape([config.size, config.size, 3])
    mask.set_shape([config.size, config.size, 1])
    return image, mask


def training_dataset(table: pd.DataFrame, config: InputConfig, seed: int = 0):
    """An endless, shuffled, unbatched stream of training ``(image, mask)`` pairs.

    Images are read from disk as they are needed (nothing is cached), so memory does not grow
    with the number of images. Ship and empty images are two streams mixed in the ratio
    ``config.empty_image_fraction``; each element has its own random seed derived from ``seed``,
    so the stream is reproducible despite parallel decoding.

    Args:
        table: Training rows from ``read_dataset``.
        config: Crop or resize settings.
        seed: Fixes shuffling, mixing, crops and augmentation.

    Returns:
        A ``tf.data.Dataset`` of ``(float32 [size, size, 3] in 0-255, float32 [size, size, 1])``.
        Batch it and pass ``steps_per_epoch`` to ``fit``: the stream never ends.
    """
    tf = _tf()
    files = _mixed_files(table, config.empty_image_fraction, seed)
    element_seeds = tf.data.Dataset.random(seed=seed + 3).batch(2)

    def make_example(files, element_seed):
        return _example(*files, element_seed, config)

    # No AutoGraph: the branches are tf.cond already, and converting the code costs about a
    # second per dataset, which every trial process would pay. One example per core at a time
    # and no autotuning (see evaluation_dataset): a 4-level U-Net on 256 crops trained at
    # 12.5 images/s on two cores with autotuning, 16-17 without.
    examples = tf.data.Dataset.zip(files, element_seeds).map(
        tf.autograph.experimental.do_not_convert(make_example),
        num_parallel_calls=usable_cores(),
        deterministic=True,
    )
    # A file that passed the header check but still does not decode is dropped, not fatal.
    return examples.ignore_errors().with_options(_without_autotuning())


def evaluation_dataset(table: pd.DataFrame, config: InputConfig | None = None, batch_size: int = 4):
    """Deterministic batches of whole images for validation, testing and inference.

    Images are neither cropped nor augmented; in resize mode they are resized as in training.
    Images of different sizes share a batch by zero-padding at the bottom and right; each
    element carries its original size to cut the prediction back, and its row position in
    ``table`` so that a file that fails to decode (and is dropped) cannot shift predictions onto
    the wrong image.

    Args:
        table: Rows with at least a ``path`` column.
        config: The training input settings; None or crop mode keeps full resolution.
        batch_size: Images per batch.

    Returns:
        A ``tf.data.Dataset`` of ``(int64 [batch] row positions, float32 [batch, H, W, 3],
        int32 [batch, 2] original (height, width))``.
    """
    tf = _tf()

    def load(position, path):
        image = decode_image(path)
        return position, evaluation_image(image, config), tf.shape(image)[:2]

    positions = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(table), dtype=np.int64), table.path.to_numpy(str))
    )
    # Fixed parallelism, no autotuning: beside a network that keeps every core busy, tf.data's
    # autotuner sometimes settles on a pace that leaves a core idle for the whole run (passes
    # at exactly 5.85 or 2.93 images/s against 7.4 with these settings, 768 x 768 on 2 cores).
    images = positions.map(
        tf.autograph.experimental.do_not_convert(load),
        num_parallel_calls=DECODING_THREADS,
        deterministic=True,
    )
    images = images.ignore_errors()
    return images.padded_batch(batch_size).prefetch(2).with_options(_without_autotuning())
