"""tf.data input (pipeline.py): training crops and their masks, augmentation, mixing, resize mode,
and whole-image evaluation batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline
from conftest import pil_image, union_mask
from shipseg.data.rle import rle_encode


def locate(crop: np.ndarray, sources: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """All (source index, top, left) where ``crop`` is an exact window of a source image."""
    size = crop.shape[0]
    found = []
    for index, source in enumerate(sources):
        candidates = np.argwhere(
            (source[: 1 - size or None, : 1 - size or None] == crop[0, 0]).all(-1)
        )
        for top, left in candidates:
            if np.array_equal(source[top : top + size, left : left + size], crop):
                found.append((index, int(top), int(left)))
    return found


def dihedral(array: np.ndarray):
    """The 8 flips/quarter turns of an (H, W, C) array, as ((flip, turns), transformed array)."""
    for flip in (False, True):
        flipped = array[:, ::-1] if flip else array
        for turns in range(4):
            yield (flip, turns), np.rot90(flipped, turns)


def tf_image(path) -> np.ndarray:
    """The image exactly as the tf.data input decodes it."""
    return pipeline.decode_image(str(path)).numpy()


def has_ship(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(len(masks), -1).max(axis=1) > 0


def take_batch(dataset, n: int):
    """The first ``n`` elements of an unbatched training stream as numpy arrays."""
    images, masks = next(iter(dataset.batch(n).take(1)))
    return images.numpy(), masks.numpy()


def crop_config(**changes) -> pipeline.InputConfig:
    settings_ = dict(mode="crop", size=32, ship_crop_probability=1.0, empty_image_fraction=0.0)
    return pipeline.InputConfig(**{**settings_, **changes})


def test_an_input_configuration_out_of_range_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="'crop' or 'resize'"):
        pipeline.InputConfig(mode="tile")
    with pytest.raises(ValueError, match="at least 8"):
        pipeline.InputConfig(size=4)
    with pytest.raises(ValueError, match="ship_crop_probability"):
        pipeline.InputConfig(ship_crop_probability=1.5)
    with pytest.raises(ValueError, match="empty_image_fraction"):
        pipeline.InputConfig(empty_image_fraction=-0.1)


def test_training_batches_shapes_and_values(synthetic_table):
    config = crop_config(ship_crop_probability=0.9, empty_image_fraction=0.3)
    dataset = pipeline.training_dataset(synthetic_table, config, seed=0).batch(8)
    for images, masks in dataset.take(3):
        assert images.shape == (8, 32, 32, 3) and images.dtype.name == "float32"
        assert masks.shape == (8, 32, 32, 1) and masks.dtype.name == "float32"
        images, masks = images.numpy(), masks.numpy()
        assert images.min() >= 0 and images.max() <= 255 and images.max() > 1
        assert set(np.unique(masks)) <= {0.0, 1.0}


def test_every_crop_contains_a_ship_when_asked(synthetic_table):
    _, masks = take_batch(pipeline.training_dataset(synthetic_table, crop_config(), seed=1), 64)
    assert has_ship(masks).all()


def test_ship_crop_probability_is_honoured(synthetic_table):
    def ship_share(probability):
        config = crop_config(ship_crop_probability=probability)
        _, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=2), 300)
        return has_ship(masks).mean()

    by_chance, half = ship_share(0.0), ship_share(0.5)
    assert by_chance < 0.8  # random 32 px crops of 64 px images often miss the small ships
    assert 0.5 < half < 1.0
    assert half == pytest.approx(0.5 + 0.5 * by_chance, abs=0.08)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_empty_image_fraction_is_honoured(synthetic_table, fraction):
    config = crop_config(empty_image_fraction=fraction)
    _, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=3), 300)
    # Crops of ship images always contain a ship here, so empty masks come from empty images.
    assert (~has_ship(masks)).mean() == pytest.approx(fraction, abs=0.07)


def test_training_stream_with_one_kind_of_image(synthetic_table):
    only_ships = synthetic_table[synthetic_table.ship_count > 0]
    config = crop_config(empty_image_fraction=0.5)
    _, masks = take_batch(pipeline.training_dataset(only_ships, config, seed=0), 40)
    assert has_ship(masks).all()
    only_empty = synthetic_table[synthetic_table.ship_count == 0]
    _, masks = take_batch(pipeline.training_dataset(only_empty, crop_config(), seed=0), 40)
    assert not masks.any()
    with pytest.raises(ValueError, match="empty"):
        pipeline.training_dataset(synthetic_table.iloc[:0], crop_config())


def test_training_stream_is_reproducible(synthetic_table):
    config = crop_config(ship_crop_probability=0.7, empty_image_fraction=0.3, augment=True)

    def batches(seed):
        dataset = pipeline.training_dataset(synthetic_table, config, seed=seed).batch(16)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(3)]

    first, again, other = batches(11), batches(11), batches(12)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other, strict=True))
    # Beside a busy network, tf.data's autotuner can settle on a pace that idles a core.
    batched = pipeline.training_dataset(synthetic_table, config, seed=11).batch(16).prefetch(2)
    assert not batched.options().autotune.enabled


def test_resize_mode_gives_whole_images_at_the_input_size_with_binary_masks(synthetic_table):
    config = pipeline.InputConfig(mode="resize", size=48, augment=True)
    images, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=0), 8)
    assert images.shape == (8, 48, 48, 3) and masks.shape == (8, 48, 48, 1)
    assert set(np.unique(masks)) <= {0.0, 1.0}


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    height, width = array.shape[:2]
    return array.reshape(height // factor, factor, width // factor, factor, -1).mean(axis=(1, 3))


@pytest.mark.parametrize("size", [64, 32, 16])
def test_resize_keeps_images_and_masks_aligned(synthetic_table, size):
    """Shrinking k times averages k x k blocks; a mask pixel stays where ships cover half of it."""
    factor = 64 // size
    config = pipeline.InputConfig(mode="resize", size=size, augment=False, empty_image_fraction=0.3)
    images, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=0), 20)
    sources = [block_mean(tf_image(path), factor) for path in synthetic_table.path]
    for image, mask in zip(images, masks, strict=True):
        distances = [np.abs(image - source).mean() for source in sources]
        index = int(np.argmin(distances))
        assert distances[index] < 0.01
        full = union_mask(synthetic_table.rles[index], (64, 64)).astype(np.float32)
        expected = block_mean(full[:, :, None], factor)[:, :, 0] >= 0.5
        np.testing.assert_array_equal(mask[:, :, 0], expected)
    assert size < 32 or has_ship(masks).any()


@pytest.mark.parametrize("augment", [False, True])
def test_crop_masks_match_the_decoded_masks_at_the_crop(synthetic_table, augment):
    """Each crop's mask is the RLE mask of its source image at the crop, flipped/turned alike."""
    config = crop_config(ship_crop_probability=0.5, empty_image_fraction=0.3, augment=augment)
    images, masks = take_batch(pipeline.training_dataset(synthetic_table, config, seed=5), 32)
    sources = [tf_image(path) for path in synthetic_table.path]
    transforms = set()
    for image, mask in zip(images, masks, strict=True):
        matches = [
            (transform, found, mask_view)
            for (transform, view), (_, mask_view) in zip(
                dihedral(image), dihedral(mask), strict=True
            )
            for found in locate(view, sources)
        ]
        assert len(matches) == 1, f"crop found {len(matches)} times in the source images"
        transform, (index, top, left), mask_view = matches[0]
        transforms.add(transform)
        expected = union_mask(synthetic_table.rles[index], (64, 64))[
            top : top + 32, left : left + 32
        ]
        np.testing.assert_array_equal(mask_view[:, :, 0], expected)
    if augment:
        assert len(transforms) >= 4
    else:
        assert transforms == {(False, 0)}
    assert has_ship(masks).any()


def test_decode_mask_matches_rle_decode():
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (5, 9), (9, 5), (17, 3), (32, 32), (40, 23)]:
        first = (rng.random((height, width)) < 0.3).astype(np.uint8)
        second = (rng.random((height, width)) < 0.3).astype(np.uint8)
        # Ships of one image come in any order and may overlap: decode_mask takes the union.
        runs = " ".join([rle_encode(second), rle_encode(first)])
        mask = pipeline.decode_mask(runs, height, width).numpy()
        assert mask.shape == (height, width, 1) and mask.dtype == np.float32
        np.testing.assert_array_equal(mask[:, :, 0], first | second)
        single = pipeline.decode_mask(rle_encode(first), height, width).numpy()
        np.testing.assert_array_equal(single[:, :, 0], first)
    assert not pipeline.decode_mask("", 4, 6).numpy().any()


def test_training_stream_survives_an_undecodable_file(synthetic_table, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG \xff\xd9")
    table = synthetic_table.copy()
    table.loc[0, "path"] = str(broken)
    config = crop_config(empty_image_fraction=0.5)
    images, _ = take_batch(pipeline.training_dataset(table, config, seed=0), 100)
    assert len(images) == 100


def evaluation_batches(table, config=None, batch_size=4):
    """All batches of ``evaluation_dataset`` as numpy (positions, images, original sizes)."""
    return [
        tuple(part.numpy() for part in batch)
        for batch in pipeline.evaluation_dataset(table, config, batch_size=batch_size)
    ]


def test_evaluation_batches_hold_every_image_once_in_order_decoded_as_pil_does(synthetic_table):
    table = synthetic_table.iloc[:10].reset_index(drop=True)
    batches = evaluation_batches(table, batch_size=4)
    assert [len(positions) for positions, _, _ in batches] == [4, 4, 2]
    positions = np.concatenate([batch[0] for batch in batches])
    images = np.concatenate([batch[1] for batch in batches])
    sizes = np.concatenate([batch[2] for batch in batches])
    assert positions.tolist() == list(range(10))
    assert images.shape == (10, 64, 64, 3) and images.dtype == np.float32
    assert sizes.tolist() == [[64, 64]] * 10
    for position, image in zip(positions, images, strict=True):
        np.testing.assert_array_equal(image, tf_image(table.path[position]))
        assert np.abs(image - pil_image(table.path[position])).mean() < 2
    again = np.concatenate([batch[1] for batch in evaluation_batches(table, batch_size=4)])
    np.testing.assert_array_equal(images, again)
    # Beside a busy network, tf.data's autotuner can settle on a pace that idles a core.
    assert not pipeline.evaluation_dataset(table).options().autotune.enabled


def test_evaluation_dataset_resize_mode_and_crop_mode(synthetic_table):
    table = synthetic_table.iloc[:3]
    resize = pipeline.InputConfig(mode="resize", size=32)
    ((_, images, sizes),) = evaluation_batches(table, resize, batch_size=3)
    assert images.shape == (3, 32, 32, 3)
    assert sizes.tolist() == [[64, 64]] * 3  # the original size, to scale predictions back
    ((_, images, _),) = evaluation_batches(table, crop_config(), batch_size=3)
    assert images.shape == (3, 64, 64, 3)


def test_evaluation_dataset_pads_images_of_different_sizes(synthetic_table, tmp_path):
    table = synthetic_table.iloc[:3].reset_index(drop=True)
    rng = np.random.default_rng(0)
    odd = tmp_path / "odd.png"
    pixels = rng.integers(1, 256, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(odd)
    table.loc[1, "path"] = str(odd)
    ((positions, images, sizes),) = evaluation_batches(table, batch_size=3)
    assert positions.tolist() == [0, 1, 2]
    assert images.shape == (3, 64, 70, 3)
    assert sizes.tolist() == [[64, 64], [40, 70], [64, 64]]
    np.testing.assert_array_equal(images[1, :40, :70], pixels)
    assert not images[1, 40:].any()
    np.testing.assert_array_equal(images[0, :, :64], tf_image(table.path[0]))
    assert not images[0, :, 64:].any()


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_evaluation_dataset_drops_corrupt_image_keeping_positions(
    synthetic_table, tmp_path, damage
):
    table = synthetic_table.iloc[:6].reset_index(drop=True)
    broken = tmp_path / "broken.jpg"
    if damage == "truncated":
        data = Path(table.path[2]).read_bytes()
        broken.write_bytes(data[: len(data) // 3])
    else:
        broken.write_text("not an image")
    good_paths = table.path.tolist()
    table.loc[2, "path"] = str(broken)
    batches = evaluation_batches(table, batch_size=2)
    positions = np.concatenate([batch[0] for batch in batches]).tolist()
    images = np.concatenate([batch[1] for batch in batches])
    assert positions == [0, 1, 3, 4, 5]
    for position, image in zip(positions, images, strict=True):
        np.testing.assert_array_equal(image, tf_image(good_paths[position]))
