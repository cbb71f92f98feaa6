"""Time and memory to find overlapping tiles and their groups at a realistic size.

Generates ``--images`` 768 x 768 JPEG tiles (once; kept in ``--workdir`` for reruns): tiles
cut on the 256-pixel grid from larger textured scenes (every true overlap known), and tiles of
open water, about as common as on the full data. Then runs ``overlaps.find_overlaps`` twice,
as ``search.py`` does: cold (every image described, the cache written) and warm (the cache
read), and reports the wall times, the peak resident memory, what was found against the truth,
and the cold time projected to the 192,556 images of the full data.

Usage: python benchmarks/overlap_benchmark.py [--images 20000] [--workdir /tmp/overlap-bench]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.data import overlaps  # noqa: E402

FULL_DATA = 192_556
SCENE_BLOCKS = 8  # scenes of 2,048 x 2,048 pixels: 36 tiles each on the 256-pixel grid
WATER_SHARE = 0.4


def main() -> None:
    options = build_parser().parse_args()
    ids, paths, truth = make_tiles(options.images, Path(options.workdir))
    cache = Path(options.workdir) / "cache.npz"
    cache.unlink(missing_ok=True)
    timings = {}
    for run in ("cold", "warm"):
        start = time.perf_counter()
        found = overlaps.find_overlaps(ids, paths, cache, log=lambda message: None)
        groups = overlaps.overlap_groups(ids, found)
        timings[run] = time.perf_counter() - start
    got = {tuple(sorted(pair)) for pair in zip(found["first"], found["second"], strict=True)}
    print_report(options.images, timings, got, truth, overlaps.describe_groups(groups))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workdir", default="/tmp/overlap-bench")
    return parser


def make_tiles(count: int, workdir: Path) -> tuple[list[str], list[str], set]:
    """The tiles (generated unless already there), and every true overlapping pair."""
    workdir.mkdir(parents=True, exist_ok=True)
    ids, paths, truth = [], [], set()
    rng = np.random.default_rng(0)
    scene_index = 0
    start = time.perf_counter()
    while len(ids) < count * (1 - WATER_SHARE):
        scene = None
        names = {}
        for row, column in itertools.product(range(SCENE_BLOCKS - 2), repeat=2):
            name = f"scene{scene_index:05d}_{row}_{column}.jpg"
            path = workdir / name
            if not path.is_file():
                scene = textured_scene(scene_index) if scene is None else scene
                tile = scene[row * 256 : row * 256 + 768, column * 256 : column * 256 + 768]
                Image.fromarray(tile).save(path, quality=85)
            names[row, column] = name
            ids.append(name)
            paths.append(str(path))
        for (a, origin_a), (b, origin_b) in itertools.combinations(names.items(), 2):
            if max(abs(a[0] - b[0]), abs(a[1] - b[1])) < 3:
                truth.add(tuple(sorted((origin_a, origin_b))))
        scene_index += 1
    while len(ids) < count:
        name = f"water{len(ids):06d}.jpg"
        path = workdir / name
        if not path.is_file():
            sea = rng.normal(0, 1.5, (768, 768, 1)) + rng.uniform(20, 90, 3)
            Image.fromarray(np.clip(sea, 0, 255).astype(np.uint8)).save(path, quality=85)
        ids.append(name)
        paths.append(str(path))
    print(f"{len(ids)} tiles ready in {workdir} ({time.perf_counter() - start:.0f} s)", flush=True)
    return ids[:count], paths[:count], truth


def textured_scene(seed: int) -> np.ndarray:
    """Land, sea and clouds at several scales (zoomed noise), with ships: cheap to make."""
    rng = np.random.default_rng(seed + 1)
    size = SCENE_BLOCKS * 256
    field = np.zeros((size, size), np.float32)
    for zoom, amplitude in ((64, 40), (16, 15), (4, 6)):
        coarse = rng.normal(size=(size // zoom, size // zoom)).astype(np.float32)
        field += ndimage.zoom(coarse, zoom, order=1) * amplitude
    rgb = np.stack([field, field * 0.9, field * 0.8], axis=-1) + 100
    for _ in range(20):
        row, column = rng.integers(0, size - 40, 2)
        rgb[row : row + 8, column : column + 30] = 230
    return np.clip(rgb, 0, 255).astype(np.uint8)


def print_report(count: int, timings: dict, got: set, truth: set, groups: dict) -> None:
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    found, missed, false = len(got & truth), len(truth - got), len(got - truth)
    print(f"images                    {count:,}")
    print(
        f"cold run (describe+group) {timings['cold']:.1f} s ({timings['cold'] / count * 1e3:.2f} ms/image)"
    )
    print(f"warm run (cache)          {timings['warm']:.1f} s")
    print(f"peak resident memory      {peak_gib:.2f} GiB")
    print(f"true overlapping pairs    {len(truth):,}: found {found:,}, missed {missed:,}")
    print(f"false pairs               {false:,}")
    print(f"groups                    {overlaps.group_summary(groups)}")
    projected = timings["cold"] / count * FULL_DATA
    print(f"projected, {FULL_DATA:,} images: {projected / 60:.1f} min cold")


if __name__ == "__main__":
    main()
