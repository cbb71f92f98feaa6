"""From the full Airbus data's size to the first training batch: each step's time and memory.

Generates (once; kept in ``--workdir`` for reruns) a Kaggle layout of the full data's size:
``train_ship_segmentations_v2.csv`` with 231,723 rows (42,556 ship images holding 81,723 ship
rows, 150,000 empty images) and 192,556 768 x 768 JPEG files in ``train_v2/``. The files are
small (flat grey, a few kB each), so the steps that read every file pay the real per-file cost
(opening, header and end-marker checks, a 1/8-scale decode for the overlap search) but not the
disk traffic of 29 GB; overlap *matching* on real textures is measured by
``benchmarks/overlap_benchmark.py``.

Then times what ``search.py`` and ``train.py`` do before their first batch, each step on its
own, with the process's peak resident memory after it:

1. ``airbus.read_dataset``: the CSV read and parsed, every file listed and checked;
2. ``overlaps.find_overlaps`` and ``overlap_groups``, cold (every image described, the cache
   written) and warm (the cache read: what a resumed or second project pays);
3. ``splits.make_split``: the stratified, group-keeping split;
4. ``splits.sample_images``: the capped validation set (1,000 whole images);
5. ``inputs.training_dataset`` with ``--empty-fraction``: building it and its first batch.

Usage: python benchmarks/full_data_benchmark.py [--workdir /tmp/full-data-bench] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg.data import airbus, inputs, overlaps, splits  # noqa: E402

IMAGES, SHIP_IMAGES, SHIP_ROWS = 192_556, 42_556, 81_723
TILE = 768
VARIANTS = 64  # distinct grey levels: files differ, no two images are the same place


def main() -> None:
    options = build_parser().parse_args()
    workdir = Path(options.workdir)
    start = time.perf_counter()
    made = make_layout(workdir, options.seed)
    print(f"layout: {'generated' if made else 'reused'} in {time.perf_counter() - start:.0f} s")
    results = run_steps(workdir, options)
    print_table(results)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/full-data-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--empty-fraction", type=float, default=0.2)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the figures to this file")
    return parser


def make_layout(workdir: Path, seed: int) -> bool:
    """Writes the CSV and the image files unless a complete layout is already there."""
    csv_path = workdir / airbus.CSV_NAME
    if csv_path.is_file():
        return False
    rng = np.random.default_rng(seed)
    names = [f"{index:08x}.jpg" for index in range(IMAGES)]
    images = workdir / "train_v2"
    images.mkdir(parents=True, exist_ok=True)
    variants = [_flat_jpeg(level) for level in np.linspace(40, 200, VARIANTS).astype(int)]
    for index, name in enumerate(names):
        (images / name).write_bytes(variants[index % VARIANTS])
    ships_per_image = _ships_per_image(rng)
    rows = ["ImageId,EncodedPixels"]
    for index, name in enumerate(names):
        count = ships_per_image[index] if index < SHIP_IMAGES else 0
        rows += [f"{name},{_ship_rle(rng)}" for _ in range(count)] or [f"{name},"]
    partial = csv_path.with_suffix(".partial")
    partial.write_text("\n".join(rows) + "\n")
    partial.rename(csv_path)  # the CSV last: its presence says the layout is complete
    return True


def _flat_jpeg(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (TILE, TILE), (level, level, level)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def _ships_per_image(rng: np.random.Generator) -> np.ndarray:
    """Ships per ship image, 1 to 15, adding up to exactly ``SHIP_ROWS`` (as the real data)."""
    counts = np.ones(SHIP_IMAGES, dtype=np.int64)
    extra = rng.choice(SHIP_IMAGES, SHIP_ROWS - SHIP_IMAGES, replace=True)
    np.add.at(counts, extra, 1)
    return np.minimum(counts, 15) + _topped_up(counts)


def _topped_up(counts: np.ndarray) -> np.ndarray:
    """What capping at 15 took away, given back to images with room (keeps the row count)."""
    lost = int(np.maximum(counts - 15, 0).sum())
    top_up = np.zeros_like(counts)
    top_up[np.flatnonzero(counts < 15)[:lost]] = 1
    return top_up


def _ship_rle(rng: np.random.Generator) -> str:
    """A filled rectangle of 4-40 x 10-120 pixels, column by column (the Kaggle encoding)."""
    height, width = int(rng.integers(4, 41)), int(rng.integers(10, 121))
    top, left = int(rng.integers(0, TILE - height)), int(rng.integers(0, TILE - width))
    starts = (np.arange(left, left + width) * TILE + top + 1).tolist()
    return " ".join(f"{start} {height}" for start in starts)


def run_steps(workdir: Path, options: argparse.Namespace) -> list[dict]:
    """Each step timed on its own, with the peak resident memory after it."""
    results, state = [], {}

    def step(name: str, work: Callable[[], object]) -> None:
        start = time.perf_counter()
        state[name] = work()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results.append({"step": name, "seconds": round(seconds, 1), "peak_rss_gib": peak})
        print(f"{name}: {seconds:.1f} s, peak RSS {peak:.2f} GiB", flush=True)

    cache = workdir / "overlaps-cache.npz"
    cache.unlink(missing_ok=True)
    step("read and check", lambda: airbus.read_dataset(workdir, log=lambda line: None))
    table = state["read and check"]
    ids, paths = table.ImageId.tolist(), table.path.tolist()
    for run in ("overlaps, cold", "overlaps, cached"):
        step(run, lambda: overlaps.overlap_groups(ids, _find(ids, paths, cache)))
    groups = state["overlaps, cached"]
    step("split", lambda: splits.make_split(table, 0.15, 0.15, options.seed, groups))
    split = state["split"]
    val = splits.select_split(table, split, "val")
    step("validation sample", lambda: splits.sample_images(val, 1000, options.seed))
    train = splits.select_split(table, split, "train")
    step("first training batch", lambda: _first_batch(train, options))
    return results


def _find(ids: list[str], paths: list[str], cache: Path):
    return overlaps.find_overlaps(ids, paths, cache, log=lambda line: None)


def _first_batch(train, options: argparse.Namespace) -> tuple:
    config = inputs.InputConfig(
        size=options.input_size, empty_image_fraction=options.empty_fraction
    )
    dataset = inputs.training_dataset(train, config, options.seed).batch(options.batch_size)
    images, masks = next(iter(dataset))
    return tuple(images.shape), tuple(masks.shape)


def print_table(results: list[dict]) -> None:
    print("| step | time | peak RSS after it |\n|---|---|---|")
    for row in results:
        print(f"| {row['step']} | {row['seconds']:.1f} s | {row['peak_rss_gib']:.2f} GiB |")


if __name__ == "__main__":
    main()
