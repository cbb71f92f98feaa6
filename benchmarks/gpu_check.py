"""One check of a machine's accelerator, under 8 minutes: what the toolkit gets out of it.

Measures, for the recipe's network (a MobileNetV2-encoder U-Net, 4 levels, 16 decoder filters):

1. training images/s on 256 x 256 crops, in float32, with mixed precision and with XLA;
2. prediction images/s on 768 x 768 images, float32 and mixed;
3. a short search's wall time against its trials' fit time (the fork server, a fresh process
   per trial: on a GPU, CUDA must start in each trial, never in the server);
4. ``inference.py`` end to end against the bare network on the same images;
5. the GPU's peak memory.

On a machine without a GPU it runs too, on the CPU with fewer steps, and says so; the figures
are then the CPU's. Prints a Markdown table and writes it, with the device's name, to ``--out``
(JSON) for ``docs/benchmarks.md``.

Usage: python benchmarks/gpu_check.py [--out gpu_check.json] [--skip-search]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

import tensorflow as tf

from shipseg.model import unet

RECIPE = {"levels": 4, "base_filters": 16, "encoder": "mobilenet_v2", "ship_head": True}


def main() -> None:
    options = build_parser().parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    scale = Scale.for_gpu() if gpus else Scale.for_cpu()
    device = _device_name(gpus)
    print(f"Device: {device}" + ("" if gpus else " (no GPU here: CPU mode, fewer steps)"))
    rows = [*training_rows(scale), *prediction_rows(scale)]
    if not options.skip_search:
        rows.append(search_row(scale))
    rows.append(inference_row(scale))
    if gpus:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
        rows.append(("peak GPU memory", f"{peak:.2f} GiB"))
    print_table(device, rows)
    if options.out:
        Path(options.out).write_text(json.dumps({"device": device, "rows": rows}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--skip-search", action="store_true", help="leave out the short search")
    return parser


class Scale:
    """How much work each measure does: enough on a GPU to be steady, little on a CPU."""

    def __init__(self, batch: int, steps: int, predict_batch: int, predict_images: int):
        self.batch, self.steps = batch, steps
        self.predict_batch, self.predict_images = predict_batch, predict_images

    @classmethod
    def for_gpu(cls) -> Scale:
        return cls(batch=32, steps=30, predict_batch=8, predict_images=64)

    @classmethod
    def for_cpu(cls) -> Scale:
        return cls(batch=8, steps=3, predict_batch=2, predict_images=4)


def _device_name(gpus: list) -> str:
    if not gpus:
        return f"CPU ({runtime.usable_cores()} cores)"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{len(gpus)} x {details.get('device_name', 'GPU')}"


def _recipe_model(mixed: bool, jit: bool):
    runtime.set_precision(mixed)
    model = unet.build_unet(**RECIPE)
    unet.compile_unet(model, 1e-4, "focal", 0.5, 0.5, jit_compile=jit)
    return model


def training_rows(scale: Scale) -> list[tuple[str, str]]:
    """Training images/s at 256 crops: float32, mixed precision, XLA (one warm-up epoch each)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (scale.batch, 256, 256, 3)).astype("float32")
    masks = (rng.uniform(size=(scale.batch, 256, 256, 1)) > 0.99).astype("float32")
    targets = {"ship_probability": masks, "has_ship": masks.max(axis=(1, 2))}
    data = tf.data.Dataset.from_tensors((images, targets)).repeat()
    rows = []
    for name, mixed, jit in (
        ("float32", False, False),
        ("mixed", True, False),
        ("XLA", False, True),
    ):
        model = _recipe_model(mixed, jit)
        model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)  # build, trace, compile
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=scale.steps, epochs=1, verbose=0)
        rate = scale.batch * scale.steps / (time.perf_counter() - start)
        rows.append((f"training, 256 crops, batch {scale.batch}, {name}", f"{rate:.1f} images/s"))
        print(rows[-1], flush=True)
    runtime.set_precision(False)
    return rows


def prediction_rows(scale: Scale) -> list[tuple[str, str]]:
    """Prediction images/s on 768 x 768 images, float32 and mixed."""
    images = np.random.default_rng(1).uniform(0, 255, (scale.predict_images, 768, 768, 3))
    images = images.astype("float32")
    rows = []
    for name, mixed in (("float32", False), ("mixed", True)):
        model = _recipe_model(mixed, False)
        model.predict(images[: scale.predict_batch], verbose=0)
        start = time.perf_counter()
        model.predict(images, batch_size=scale.predict_batch, verbose=0)
        rate = len(images) / (time.perf_counter() - start)
        rows.append(
            (f"prediction, 768 x 768, batch {scale.predict_batch}, {name}", f"{rate:.2f} images/s")
        )
        print(rows[-1], flush=True)
    runtime.set_precision(False)
    return rows


def search_row(scale: Scale) -> tuple[str, str]:
    """A short search on the synthetic data: its wall time over its trials' fit time."""
    results = Path(tempfile.mkdtemp(prefix="gpu-check-search-"))
    command = [
        sys.executable, str(ROOT / "search.py"), "--results-dir", str(results),
        "--max-epochs", "2", "--factor", "2", "--images-per-epoch", str(scale.batch * 4),
        "--input-size", "128", "--hp", "levels=3", "--hp", "base_filters=8", "--verbose", "0",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=400)
    summary = json.loads((results / "synthetic" / "search_summary.json").read_text())
    ratio = summary["wall_seconds"] / max(summary["fit_seconds"], 1e-9)
    row = (
        f"short search ({summary['trials']} trials, fresh process each)",
        f"wall {summary['wall_seconds']:.0f} s, fit {summary['fit_seconds']:.0f} s: {ratio:.2f}x",
    )
    print(row, flush=True)
    return row


def inference_row(scale: Scale) -> tuple[str, str]:
    """``inference.py`` end to end against the bare network (``inference_benchmark.py``).

    On generated 768 x 768 JPEGs and a fresh 4-level, 16-filter U-Net, so that the check needs
    neither the sample nor a trained model.
    """
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-images-"))
    rng = np.random.default_rng(2)
    for index in range(max(scale.predict_images, 8)):
        pixels = rng.integers(0, 256, (768, 768, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.jpg", quality=90)
    command = [
        sys.executable, str(ROOT / "benchmarks" / "inference_benchmark.py"),
        "--images", str(folder), "--fresh-model", "--batch-size", str(scale.predict_batch),
        "--repeats", "1",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    ratio = next(
        (line for line in result.stdout.splitlines() if line.startswith("| ratio, median")), None
    )
    value = ratio.split("|")[2].strip() if ratio else f"failed: {result.stderr[-300:]}"
    row = ("inference.py end to end / bare network, 768 x 768", value)
    print(row, flush=True)
    return row


def print_table(device: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n| measure ({device}, {time.strftime('%Y-%m-%d')}) | figure |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
