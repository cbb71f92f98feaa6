"""Scenes of any size: overlapping tiles at full resolution, blended into one probability map.

Satellite scenes come far larger than the 768 x 768 images the network is trained for. A scene
above a size limit is cut into tiles of ``tile`` pixels that overlap by ``overlap``; each tile is
predicted like an ordinary image, and the tiles' probabilities are averaged with weights that
fall off linearly over the overlap towards each tile border (and stay at 1 on the scene's own
borders), so a ship crossing a tile border gets one smooth probability and comes out as one
ship. Memory follows the scene's outputs, not the network's input: the scene is kept as bytes
(3 per pixel), the network sees one batch of tiles at a time, and the map and its weights are
one float32 each per pixel.

The image-level ship probability of a scene is the largest of its tiles' (a scene holds a ship
where any of its parts does).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shipseg.core.errors import UserError
from shipseg.data import airbus
from shipseg.predict import prediction

DEFAULT_TILE = 768
DEFAULT_OVERLAP = 128
# Images with a side above this are tiled (Airbus images, 768, are not).
DEFAULT_LIMIT = 1536


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``: step ``tile - overlap``, the last flush.

    Args:
        length: The scene's side along this axis, in pixels.
        tile: The tile's side in pixels; a scene no longer than it is one tile.
        overlap: Pixels neighbouring tiles share, 0 to ``tile - 1`` (the last tile, flush with
            the border, may share more).

    Raises:
        ValueError: When ``overlap`` is not smaller than ``tile``.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap ({overlap}) must be at least 0 and below the tile ({tile})")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """One side of a tile's blending weights: 1 inside, falling linearly over ``overlap``.

    A side that lies on the scene's border (``at_start`` / ``at_end``) stays at 1: no other
    tile covers it. Weights never reach 0, so every pixel has weight.

    Args:
        length: The tile's side along this axis, in pixels.
        overlap: Pixels over which the weight falls (capped at half the side).
        at_start: Whether the tile's first pixel lies on the scene's border (no fall there).
        at_end: Whether the tile's last pixel lies on the scene's border (no fall there).
    """
    weights = np.ones(length, dtype=np.float32)
    fall = min(overlap, length // 2)
    if fall:
        slope = np.arange(1, fall + 1, dtype=np.float32) / (fall + 1)
        if not at_start:
            weights[:fall] = slope
        if not at_end:
            weights[-fall:] = slope[::-1]
    return weights


def tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[slice, slice]]:
    """Every tile of a scene, as its rows and columns (all of one shape).

    Args:
        height: The scene's height in pixels.
        width: The scene's width in pixels.
        tile: The tile's side in pixels (a scene side shorter than it gives shorter tiles).
        overlap: Pixels neighbouring tiles share (see ``tile_starts``).
    """
    side_h, side_w = min(tile, height), min(tile, width)
    return [
        (slice(top, top + side_h), slice(left, left + side_w))
        for top in tile_starts(height, tile, overlap)
        for left in tile_starts(width, tile, overlap)
    ]


def tile_weights(rows: slice, columns: slice, shape: tuple[int, int], overlap: int) -> np.ndarray:
    """A tile's ``(h, w)`` blending weights: 1 inside, falling towards borders other tiles share.

    Args:
        rows: The tile's rows in the scene (as ``tiles`` gives them).
        columns: The tile's columns in the scene.
        shape: The scene's ``(height, width)``, to tell the scene's borders from shared ones.
        overlap: Pixels neighbouring tiles share, over which the weights fall.
    """
    height, width = shape
    weight_rows = ramp(rows.stop - rows.start, overlap, rows.start == 0, rows.stop >= height)
    weight_columns = ramp(
        columns.stop - columns.start, overlap, columns.start == 0, columns.stop >= width
    )
    return weight_rows[:, None] * weight_columns[None, :]


def predict_scene(
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    scene: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 2,
    progress: Callable[[int], None] | None = None,
    gate: float | None = None,
) -> tuple[np.ndarray, float | None]:
    """The blended probability map of a scene, predicted tile by tile.

    With a ship head and a ``gate``, each tile is gated as a whole image would be: a tile whose
    ship probability is below ``gate`` adds nothing to the blend. Its pixels keep what an open
    neighbour saw there (a ship crossing into a doubted tile stays whole), and pixels no open
    tile covers are 0. Without it, a scene holding one ship would open every tile of land and
    harbour (measured on a 3,072 x 3,072 mosaic of sample images: their quays came out as ships).

    Args:
        predict: ``(n, h, w, 3)`` float32 tiles -> ``(n, h, w)`` probabilities and ``(n,)``
            ship probabilities or None (``prediction.predict_batch`` with its model).
        scene: ``(H, W, 3)`` uint8 RGB.
        tile: Tile side in pixels.
        overlap: Pixels shared by neighbouring tiles.
        batch_size: Tiles per forward pass.
        progress: Called with the number of tiles done after each batch.
        gate: The tuned ``ship_threshold``; None blends every tile.

    Returns:
        ``(H, W)`` float32 probabilities and the scene's ship probability (the largest tile's),
        or None for a model without a ship head.
    """
    shape = scene.shape[:2]
    total = np.zeros(shape, dtype=np.float32)
    weight = np.zeros(shape, dtype=np.float32)
    ship = None
    parts = tiles(*shape, tile, overlap)
    for first in range(0, len(parts), batch_size):
        batch = parts[first : first + batch_size]
        images = np.stack([scene[rows, columns] for rows, columns in batch]).astype(np.float32)
        probabilities, ships = predict(images)
        open_tiles = [True] * len(batch) if ships is None or gate is None else ships >= gate
        for (rows, columns), probability, is_open in zip(
            batch, probabilities, open_tiles, strict=True
        ):
            if is_open:
                weights = tile_weights(rows, columns, shape, overlap)
                total[rows, columns] += probability * weights
                weight[rows, columns] += weights
        if ships is not None:
            batch_ship = float(np.max(ships))
            ship = batch_ship if ship is None else max(ship, batch_ship)
        if progress is not None:
            progress(len(batch))
    np.divide(total, weight, out=total, where=weight > 0)
    return total, ship


def scene_positions(sizes: list[tuple[int, int]], input_config, limit: int) -> set[int]:
    """The positions of the images to tile, given each image's (height, width).

    An image is tiled when a side is above ``limit`` and the model was trained on crops (a
    model trained on resized images sees every image resized).

    Args:
        sizes: Each image's ``(height, width)`` in pixels, in the order of their positions.
        input_config: The training's input settings (``inputs.InputConfig``); None counts
            as crops.
        limit: The longest side, in pixels, an image may have and still be predicted whole
            (``--tile-above``).
    """
    if input_config is not None and input_config.mode == "resize":
        return set()
    return {position for position, size in enumerate(sizes) if max(size) > limit}


def predict_scene_file(
    model,
    path: Path,
    position: int,
    postprocess,
    tile: int,
    overlap: int,
    batch_size: int,
):
    """One large scene, predicted in overlapping tiles, with a progress bar of its tiles.

    ``postprocess`` (an ``scoring.PostprocessConfig``) gives the flip TTA and each tile's
    gate (its ``ship_threshold``, for a model with a ship head).

    Args:
        model: The trained U-Net (Keras or TFLite).
        path: The scene's image file (any size Pillow reads).
        position: The scene's position among the images of the run, kept in the prediction.
        postprocess: The post-processing settings (flip TTA and the tiles' ship gate).
        tile: The tile's side in pixels (``--tile``).
        overlap: Pixels neighbouring tiles share (``--overlap``).
        batch_size: Tiles per forward pass (memory against speed).

    Returns:
        An ``prediction.Prediction`` of the whole scene (its image included, as uint8).
    """
    from tqdm import tqdm

    scene = read_scene(path)
    count = len(tiles(*scene.shape[:2], tile, overlap))
    with tqdm(total=count, unit="tile", desc=path.name) as progress:
        probabilities, ship = predict_scene(
            lambda images: prediction.predict_batch(model, images, postprocess.flip_tta),
            scene,
            tile,
            overlap,
            batch_size,
            progress.update,
            postprocess.ship_threshold,
        )
    return prediction.Prediction(position, probabilities, ship, scene)


def read_scene(source: Path | BinaryIO) -> np.ndarray:
    """A scene (a file, or an upload's bytes) as ``(H, W, 3)`` uint8 RGB.

    Pillow decodes scenes (3 bytes a pixel, not TensorFlow's 12 of float32): ``inference.py``
    and the service both read them here, so a scene gives both the same pixels.
    """
    from PIL import Image

    with airbus.pillow_allows_scenes():  # Pillow checks the size when it opens, not later
        image = Image.open(source)
    with image:
        return np.asarray(image.convert("RGB"))


def check_scene_options(tile: int, tile_above: int, overlap: int) -> None:
    """Raises ``UserError`` naming the option when the tiling options are out of range.

    Args:
        tile: ``--tile``: the tile's side in pixels, at least 1.
        tile_above: ``--tile-above``: the side above which an image is tiled, at least 1.
        overlap: ``--overlap``: pixels tiles share, 0 to ``tile - 1``.

    Raises:
        UserError: For a value out of range, naming its option.
    """
    for name, value in (("tile", tile), ("tile-above", tile_above)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1")
    if not 0 <= overlap < tile:
        raise UserError("--overlap must be in [0, --tile)")
