"""Training and prediction speed of each encoder, as the search and ``inference.py`` run them.

Training: images per second of ``model.fit`` steps on 256 x 256 crops (the real-data input) at
batch size 8, compiled as the search compiles (Adam, BCE + Dice), after one warm-up step.
Prediction: images per second of ``predict_on_batch`` on whole 768 x 768 images, two at a
time. Random weights and random pixels: the speed does not depend on either. Every encoder
uses its whole backbone (``--levels 5``, stride 32) under the same decoder (``--filters 16``);
the plain U-Net is the search's default shape (4 levels, 16 filters).

Usage: python benchmarks/encoder_benchmark.py [--steps 10] [--encoders unet,resnet50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

import keras

import hypermodel
from shipseg.model import encoders


def main() -> None:
    options = build_parser().parse_args()
    print(
        f"{'encoder':16} {'levels':>6} {'parameters':>11} {'train img/s':>12} {'predict img/s':>14}"
    )
    for name in options.encoders.split(","):
        levels = 4 if name == encoders.PLAIN else options.levels
        row = measure(name, levels, options.filters, options.steps, options.batch_size)
        print(
            f"{name:16} {levels:>6} {row['parameters']:>11,} {row['train']:>12.1f} "
            f"{row['predict']:>14.2f}",
            flush=True,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default=",".join(encoders.ENCODERS))
    parser.add_argument("--levels", type=int, default=5, help="depth of the pretrained ones")
    parser.add_argument("--filters", type=int, default=16, help="decoder's base filters")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


def measure(name: str, levels: int, filters: int, steps: int, batch_size: int) -> dict:
    """Parameters, training images/s at 256 x 256 and prediction images/s at 768 x 768."""
    keras.utils.set_random_seed(0)
    model = hypermodel.build_unet(levels, filters, encoder=name)
    hypermodel.compile_unet(model, 1e-3, "bce", 0.5)
    rng = np.random.default_rng(0)
    crops = rng.uniform(0, 255, (batch_size, 256, 256, 3)).astype(np.float32)
    masks = (rng.uniform(size=(batch_size, 256, 256, 1)) > 0.99).astype(np.float32)
    model.train_on_batch(crops, masks)  # traces the training step
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(crops, masks)
    train = steps * batch_size / (time.perf_counter() - start)
    whole = rng.uniform(0, 255, (2, 768, 768, 3)).astype(np.float32)
    model.predict_on_batch(whole)
    start = time.perf_counter()
    for _ in range(3):
        model.predict_on_batch(whole)
    predict = 6 / (time.perf_counter() - start)
    return {"parameters": model.count_params(), "train": train, "predict": predict}


if __name__ == "__main__":
    main()
