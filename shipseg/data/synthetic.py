"""A synthetic dataset in the Kaggle layout, so that every command runs without the real data.

Sea from smoothed noise, ships as bright oriented rectangles with a wake, written as JPEGs and
an RLE CSV exactly like the Airbus files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import errors
from shipseg.data import airbus
from shipseg.data.rle import rle_encode

# The synthetic dataset's folder in a results folder (the commands' default without --data-dir).
SYNTHETIC_DIR_NAME = "synthetic-data"
DEFAULT_SYNTHETIC_DIR = Path("results") / SYNTHETIC_DIR_NAME


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What ``generate_synthetic_dataset`` makes.

    Attributes:
        train_images: Number of labelled images (``train_v2/``).
        test_images: Number of unlabelled images (``test_v2/``).
        image_size: Side of the square images (768 like Airbus; smaller for fast runs).
        empty_fraction: Share of labelled images without ships (Airbus: 0.78).
        max_ships: Most ships in one image (Airbus: 15).
        seed: Fixes every pixel and every ship.
    """

    train_images: int = 240
    test_images: int = 12
    image_size: int = 256
    empty_fraction: float = 0.78
    max_ships: int = 15
    seed: int = 0


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Value noise: a coarse random grid bilinearly upsampled to ``size`` (smooth blotches)."""
    coarse = rng.standard_normal((size // cell + 2, size // cell + 2))
    positions = np.arange(size) / cell
    low = positions.astype(int)
    frac = positions - low
    rows = coarse[low] * (1 - frac)[:, None] + coarse[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def synthetic_sea(rng: np.random.Generator, size: int) -> np.ndarray:
    """A sea-like RGB background: smooth colour variations, swell lines and sensor grain."""
    base = np.array([30, 55, 70], dtype=np.float64) + rng.uniform(-12, 12, 3)
    texture = sum(
        _smooth_noise(rng, size, max(2, size // divisor)) * weight
        for divisor, weight in ((3, 10.0), (12, 5.0), (48, 2.5))
    )
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:size, 0:size]
    wavelength = rng.uniform(6, 14) * size / 256
    swell = 3.0 * np.sin((rows * np.cos(angle) + cols * np.sin(angle)) * 2 * np.pi / wavelength)
    grain = rng.normal(0, 2.5, (size, size, 3))
    image = base + (texture + swell)[:, :, None] * np.array([0.6, 0.9, 1.0]) + grain
    return np.clip(image, 0, 255)


def oriented_rectangle(center, length: float, width: float, angle: float, shape) -> np.ndarray:
    """A filled rotated rectangle as a boolean mask of ``shape``.

    Args:
        center: The rectangle's centre, ``(row, column)`` in pixels (fractional allowed).
        length: Its long side in pixels.
        width: Its short side in pixels.
        angle: Direction of the long side in radians: 0 runs along the rows (left to right),
            ``pi / 2`` down the columns.
        shape: ``(height, width)`` of the mask; the parts outside it are cut off.
    """
    from skimage.draw import polygon

    direction = np.array([np.sin(angle), np.cos(angle)])  # (row, col)
    normal = np.array([direction[1], -direction[0]])
    half_l, half_w = direction * length / 2, normal * width / 2
    corners = np.array(
        [
            center + half_l + half_w,
            center + half_l - half_w,
            center - half_l - half_w,
            center - half_l + half_w,
        ]
    )
    mask = np.zeros(shape, dtype=bool)
    rr, cc = polygon(corners[:, 0], corners[:, 1], shape)
    mask[rr, cc] = True
    return mask


def draw_ships(rng: np.random.Generator, image: np.ndarray, count: int) -> list[np.ndarray]:
    """Paints ``count`` non-touching ships into ``image`` in place and returns their masks.

    Ships are filled oriented rectangles 3 to 100 pixels long (at most a third of the image, so
    small synthetic images still hold them), log-uniformly distributed as on Airbus images, 3 to
    7 times longer than wide, mostly brighter than the sea as on the real images.

    Args:
        rng: Draws sizes, places, orientations and colours (the dataset's seed fixes it).
        image: A square ``(size, size, 3)`` float RGB image, painted in place.
        count: Ships wanted; fewer are drawn when no free place is found in ``20 * count``
            tries (a small, crowded image).

    Returns:
        One boolean ``(size, size)`` mask per ship drawn.
    """
    from skimage.morphology import dilation, disk

    size = image.shape[0]
    longest = min(100.0, size / 3)
    occupied = np.zeros((size, size), dtype=bool)
    masks = []
    for _ in range(count * 20):
        if len(masks) == count:
            break
        length = np.exp(rng.uniform(np.log(3), np.log(max(longest, 3.0))))
        width = max(1.5, length / rng.uniform(3, 7))
        center = rng.uniform(length / 2, size - length / 2, 2)
        mask = oriented_rectangle(center, length, width, rng.uniform(0, np.pi), (size, size))
        # Kaggle labels never overlap; keep a gap so each ship stays one separate region.
        if not mask.any() or (dilation(mask, disk(2)) & occupied).any():
            continue
        colour = rng.uniform(150, 250, 3) if rng.random() < 0.85 else rng.uniform(5, 25, 3)
        image[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        occupied |= mask
        masks.append(mask)
    return masks


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def generate_synthetic_dataset(
    out_dir: str | os.PathLike, config: SyntheticConfig = SyntheticConfig()
) -> Path:
    """Writes a synthetic dataset in the exact Kaggle layout.

    The dataset is built in a temporary folder next to ``out_dir`` and renamed into place, so an
    interrupted run never leaves a partial dataset. Same config, same bytes.

    Args:
        out_dir: Folder to create; it must not exist yet.
        config: Sizes, share of empty images and seed.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        rng = np.random.default_rng(config.seed)
        (staging / "train_v2").mkdir()
        (staging / "test_v2").mkdir()
        rows = []
        for index in range(config.train_images + config.test_images):
            is_test = index >= config.train_images
            image_id = f"{rng.integers(16**9):09x}.jpg"
            image = synthetic_sea(rng, config.image_size)
            has_ships = rng.random() >= config.empty_fraction
            count = min(config.max_ships, int(rng.geometric(0.45))) if has_ships else 0
            masks = draw_ships(rng, image, count)
            _save_jpeg(staging / ("test_v2" if is_test else "train_v2") / image_id, image)
            if not is_test:
                rows += [(image_id, rle_encode(mask)) for mask in masks] or [(image_id, "")]
        pd.DataFrame(rows, columns=list(airbus.CSV_COLUMNS)).to_csv(
            staging / airbus.CSV_NAME, index=False
        )
        (staging / "synthetic.json").write_text(
            json.dumps(dataclasses.asdict(config), indent=2) + "\n"
        )
        os.chmod(staging, 0o755)
        try:
            os.replace(staging, out_dir)
        except OSError:
            # Another process generated the same dataset first: keep theirs if it matches.
            marker = out_dir / "synthetic.json"
            if not marker.is_file() or json.loads(marker.read_text()) != dataclasses.asdict(config):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_synthetic_dataset(
    out_dir: str | os.PathLike = DEFAULT_SYNTHETIC_DIR, config: SyntheticConfig = SyntheticConfig()
) -> Path:
    """Returns a synthetic dataset made with ``config``, generating it on first use.

    A folder made with another configuration is replaced, so the data always matches the config.
    """
    out_dir = Path(out_dir)
    marker = out_dir / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == dataclasses.asdict(config):
        return out_dir
    if out_dir.exists():
        if not marker.is_file():
            raise errors.DataError(
                f"{out_dir}: exists but is not a synthetic dataset; refusing to replace it"
            )
        shutil.rmtree(out_dir)
    return generate_synthetic_dataset(out_dir, config)
