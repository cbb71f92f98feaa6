"""End-to-end inference throughput against the model's bare ``predict`` at 768 x 768.

End to end is what ``inference.py`` does: read and decode the JPEGs, predict, post-process
(thresholds, connected components), write a mask PNG and an overlay PNG per image and the
submission CSV. Bare is ``model.predict_on_batch`` on the same images already in memory, with
the same batch size. The model is the given one, the latest trained one, or a fresh 4-level
U-Net of ``--fresh-filters`` filters (the speed does not depend on the weights).

Also the per-image CPU work on its own, on one core (one thread, the network's predictions
made beforehand): decoding, post-processing, the ship list, the mask and overlay PNGs and the
record, each timed. A network on a GPU is capped by it: at N images/s per core, C cores finish
at most about N x C images/s whatever the network's speed.

Usage: python benchmarks/inference_benchmark.py [--images DIR] [--model PATH] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import threadpoolctl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

import hypermodel
import inference
import pipeline
from shipseg.data import airbus, inputs
from shipseg.model import loading
from shipseg.predict import batch as batch_inference
from shipseg.predict import detection, drawing, prediction, records


def main() -> None:
    options = build_parser().parse_args()
    paths = airbus.list_images([options.images])[: options.limit]
    work = Path(tempfile.mkdtemp(prefix="inference-benchmark-"))
    model_path = benchmark_model(options, work)
    bare, end_to_end = timed_passes(options, paths, model_path, work)
    ratios = [e / b for e, b in zip(end_to_end, bare, strict=True)]
    height, width = pipeline.decode_image(str(paths[0])).shape[:2]
    print(
        f"\n| measure ({len(paths)} images of {width} x {height}, "
        f"batch {options.batch_size}, model {model_path.name}, {options.repeats} alternating "
        "passes) | images/s |\n|---|---|"
    )
    print(f"| bare model.predict_on_batch, images in memory, each pass | {_listed(bare)} |")
    print(
        "| inference.py end to end (read, predict, post-process, write PNGs + CSV), each pass | "
        f"{_listed(end_to_end)} |"
    )
    print(f"| ratio end to end / bare, each pair of passes | {_listed(ratios, 3)} |")
    print(f"| ratio, median of the pairs | {float(np.median(ratios)):.3f} |")
    per_image_work(paths, model_path, work)


def per_image_work(paths: list[Path], model_path: Path, work: Path) -> None:
    """Times each step of the per-image CPU work on one thread, the predictions made first."""
    model = loading.load_model(model_path)
    table = pd.DataFrame({"path": [str(path) for path in paths]})
    settings = batch_inference.InferenceSettings(())
    input_config, postprocess = batch_inference.load_settings(model_path, settings)
    predictions = list(prediction.predict_table(model, table, input_config, 2))
    out = work / "per-image"
    with threadpoolctl.threadpool_limits(1):
        finish_all(paths, predictions, postprocess, out)  # warms the caches up
        steps = finish_all(paths, predictions, postprocess, out)
    print(f"\n| per-image CPU work, one core ({len(paths)} images) | ms an image | images/s |")
    print("|---|---|---|")
    for step, seconds in steps.items():
        print(f"| {step} | {1000 * seconds / len(paths):.2f} | {len(paths) / seconds:.0f} |")
    total = sum(steps.values())
    without = total - steps["overlay PNG"]
    print(f"| **all** | {1000 * total / len(paths):.2f} | **{len(paths) / total:.0f}** |")
    print(f"| all but the overlay (--no-overlays) | {1000 * without / len(paths):.2f} | "
          f"{len(paths) / without:.0f} |")  # fmt: skip


def finish_all(paths, predictions, postprocess, out: Path) -> dict[str, float]:
    """What ``inference.py`` does to each predicted image, step by step: seconds per step."""
    steps: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def step(name: str):
        start = time.perf_counter()
        yield
        steps[name] += time.perf_counter() - start

    for path, predicted in zip(paths, predictions, strict=True):
        with step("decode"):
            image = inputs.decode_image(str(path)).numpy()
        with step("post-process and ship list"):
            labels, record = detection.describe(path.name, predicted, postprocess)
        with step("mask PNG"):
            mask = detection.mask_png(labels)
            drawing.save_png(out / "masks" / f"{path.stem}.png", mask, durable=False)
        with step("overlay PNG"):
            overlay = detection.overlay_png(image, labels)
            drawing.save_png(out / "overlays" / f"{path.stem}.png", overlay, durable=False)
        with step("record"):
            records.write_record(out, path.name, record)
    return steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", default=str(ROOT.parent / "shared" / "data" / "airbus-sample" / "test_images")
    )
    parser.add_argument(
        "--model", help="a .keras model (default: latest results/*/final/model.keras)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed pairs of passes (bare, then end to end)"
    )
    parser.add_argument("--limit", type=int, default=120, help="use at most this many images")
    parser.add_argument(
        "--fresh-model",
        action="store_true",
        help="an untrained 4-level U-Net instead of the latest trained model",
    )
    parser.add_argument(
        "--fresh-filters", type=int, default=8, help="the fresh U-Net's first-level filters"
    )
    parser.add_argument(
        "--no-overlays", action="store_true", help="end to end without the overlay PNGs"
    )
    return parser


def benchmark_model(options: argparse.Namespace, work: Path) -> Path:
    """The given model, the latest trained one, or a fresh 4-level U-Net saved under ``work``."""
    if options.model:
        return Path(options.model)
    trained = sorted(ROOT.glob("results/*/final/model.keras"), key=lambda p: p.stat().st_mtime)
    if trained and not options.fresh_model:
        return trained[-1]
    model_path = work / f"unet_4x{options.fresh_filters}.keras"
    model = hypermodel.build_unet(4, options.fresh_filters)
    hypermodel.compile_unet(model, 1e-3, "bce", 0.5)
    model.save(model_path)
    return model_path


def timed_passes(
    options: argparse.Namespace, paths: list[Path], model_path: Path, work: Path
) -> tuple[list[float], list[float]]:
    """Images per second of each bare pass and each end-to-end pass, alternating.

    Alternating means a machine that slows down or speeds up during the run (a shared virtual
    machine does) biases neither side.
    """
    model = loading.load_model(model_path)
    batches = [
        np.stack(
            [
                pipeline.decode_image(str(path)).numpy()
                for path in paths[start : start + options.batch_size]
            ]
        )
        for start in range(0, len(paths), options.batch_size)
    ]
    model.predict_on_batch(batches[0])  # build and warm up
    bare, end_to_end = [], []
    for repeat in range(options.repeats):
        start = time.perf_counter()
        for batch in batches:
            model.predict_on_batch(batch)
        bare.append(len(paths) / (time.perf_counter() - start))
        arguments = [
            *map(str, paths),
            "--model",
            str(model_path),
            "--out",
            str(work / f"out{repeat}"),
        ]
        arguments += ["--batch-size", str(options.batch_size)]
        arguments += ["--no-overlays"] if options.no_overlays else []
        args = inference.build_parser().parse_args(arguments)
        result = batch_inference.run_inference(inference.settings_from(args))
        end_to_end.append(result["processed"] / result["seconds"])
    return bare, end_to_end


def _listed(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


if __name__ == "__main__":
    main()
