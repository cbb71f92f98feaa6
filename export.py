"""Export a trained model for serving: ``python export.py [--model PATH] [--out DIR]``.

Writes, into ``--out`` (default: ``results/<project>/export/``), all or nothing:

    saved_model/    a TensorFlow SavedModel (``tf.saved_model.load(path).serve(images)``; TF
                    Serving), input ``(n, size, size, 3)`` float32 RGB in 0-255
    model.tflite    the same network for TFLite (``inference.py --model .../model.tflite``)
    model_float16.tflite, model_dynamic.tflite
                    with ``--quantized``: TFLite's float16 and dynamic-range quantisations
    export.json     the input format, the outputs, the post-processing ``train.py`` tuned, the
                    training's input settings, the parity measured against the .keras model,
                    each format's timing (``timings``) and, with ``--evaluate``, its test-split
                    F2 and its difference from the Keras model's (``test_scores``)

Parity is measured at export on real images (the first two of the training's test split, or the
``--parity-images`` given; seeded random images when neither exists) and printed. Every format
is timed as a search times its trials (a 768 x 768 image at batch 1, median and p95) and
compared in a printed table. The work is ``shipseg.predict.deploy``'s.
"""

from __future__ import annotations

import argparse
import sys

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg import cli
from shipseg.predict import deploy
from shipseg.predict.deploy import ExportSettings

DEFAULTS = cli.defaults_of(ExportSettings)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``export.py``."""
    parser = argparse.ArgumentParser(
        description="Export the trained U-Net as a TensorFlow SavedModel and a TFLite file.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument(
        "--model", help="a .keras model (default: the latest results/*/final/model.keras)"
    )
    parser.add_argument("--results-dir", default=DEFAULTS.results_dir)
    parser.add_argument("--out", help="export folder (default: results/<project>/export)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=DEFAULTS.image_size,
        help="height and width of the exported input (smaller images are padded)",
    )
    parser.add_argument(
        "--parity-images",
        nargs="+",
        help="images to check the exported models on (default: two of the test split)",
    )
    parser.add_argument(
        "--quantized",
        action="store_true",
        help="also TFLite with float16 weights and with dynamic-range (int8) weights",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="score every format on the training's test split (F2, and against the Keras model)",
    )
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=DEFAULTS.latency_runs,
        help="timed calls of each format at batch 1, at most (fewer past 3 s)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> ExportSettings:
    """The command line as ``ExportSettings``."""
    images = tuple(args.parity_images) if args.parity_images else None
    options = {**vars(args), "parity_images": images}
    return ExportSettings(**options)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; user errors are one line and exit status 2."""
    return cli.main(
        "export.py", build_parser(), lambda args: deploy.run_export(settings_from(args)), argv
    )


if __name__ == "__main__":
    sys.exit(main())
