"""End-to-end inference throughput against the model's bare ``predict`` at 768 x 768.

End to end is what ``inference.py`` does: read and decode the JPEGs, predict, post-process
(thresholds, connected components), write a mask PNG and an overlay PNG per image and the
submission CSV. Bare is ``model.predict_on_batch`` on the same images already in memory, with
the same batch size. The model is the given one, the latest trained one, or a fresh 4-level,
16-filter U-Net (the speed does not depend on the weights).

Usage: python benchmarks/inference_benchmark.py [--images DIR] [--model PATH] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402

pipeline.import_tensorflow_quietly()

import hypermodel  # noqa: E402
import inference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", default=str(ROOT.parent / "shared" / "data" / "airbus-sample" / "test_images")
    )
    parser.add_argument(
        "--model", help="a .keras model (default: latest results/*/final/model.keras)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed passes of each (best is kept)"
    )
    parser.add_argument("--limit", type=int, default=120, help="use at most this many images")
    parser.add_argument(
        "--fresh-model",
        action="store_true",
        help="an untrained 4-level, 16-filter U-Net instead of the latest trained model",
    )
    options = parser.parse_args()

    paths = pipeline.list_images([options.images])[: options.limit]
    work = Path(tempfile.mkdtemp(prefix="inference-benchmark-"))
    model_path = Path(options.model) if options.model else None
    if model_path is None and not options.fresh_model:
        trained = sorted(
            (ROOT / "results").glob("*/final/model.keras"), key=lambda p: p.stat().st_mtime
        )
        model_path = trained[-1] if trained else None
    if model_path is None:
        model_path = work / "unet_4x16.keras"
        model = hypermodel.build_unet(4, 16)
        hypermodel.compile_unet(model, 1e-3, "bce", 0.5)
        model.save(model_path)
    model = inference.load_model(model_path)

    images = [pipeline.decode_image(str(path)).numpy() for path in paths]
    batches = [
        np.stack(images[start : start + options.batch_size])
        for start in range(0, len(images), options.batch_size)
    ]
    model.predict_on_batch(batches[0])  # build and warm up
    bare = []
    for _ in range(options.repeats):
        start = time.perf_counter()
        for batch in batches:
            model.predict_on_batch(batch)
        bare.append(len(images) / (time.perf_counter() - start))

    end_to_end = []
    for repeat in range(options.repeats):
        args = inference.build_parser().parse_args(
            [
                *[str(path) for path in paths],
                "--model",
                str(model_path),
                "--out",
                str(work / f"out{repeat}"),
                "--batch-size",
                str(options.batch_size),
            ]
        )
        result = inference.run_inference(args)
        end_to_end.append(result["processed"] / result["seconds"])

    print(
        f"\n| measure ({len(images)} images of {images[0].shape[1]} x {images[0].shape[0]}, "
        f"batch {options.batch_size}, model {model_path.name}) | images/s |\n|---|---|"
    )
    print(f"| bare model.predict_on_batch, images in memory | {max(bare):.2f} |")
    print(
        f"| inference.py end to end (read, predict, post-process, write PNGs + CSV) | {max(end_to_end):.2f} |"
    )
    print(f"| ratio end to end / bare | {max(end_to_end) / max(bare):.3f} |")


if __name__ == "__main__":
    main()
