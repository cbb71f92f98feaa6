"""Find ships in images and write a Kaggle submission: ``python inference.py IMAGES...``.

IMAGES are files, folders or glob patterns (JPEG or PNG, RGB or grayscale, any size). The model
defaults to the latest ``results/*/final/model.keras``; its ``config.json`` supplies the input
handling and the post-processing tuned on validation images, each of which a flag may override.
``--model .../export/model.tflite`` predicts with ``export.py``'s TFLite file instead (its
``export.json`` supplies the same settings; images no larger than the exported size).

Writes to ``--out`` (default: ``results/<project>/predictions/``):

    masks/<image>.png      the predicted ships, one grey level per ship (0 = sea)
    overlays/<image>.png   the image in grey with the predicted ships in red
    submission.csv         ImageId,EncodedPixels: one row per ship, one empty row per image
                           without ships (the Kaggle format)
    images.csv             one row per image: the ship head's probability (the learnt "is
                           there a ship?"), the top pixel probability, and the ships kept
    ships.csv              one row per ship (``ShipRecord``): centre, length and width (pixels
                           and metres), heading, area, probabilities, corners, its own RLE
    ships.geojson          the ships' boxes as polygons in pixel coordinates
    scores.json            with ``--labels``: pixel Dice and instance F2 against a ship CSV
    records/<image>.json   each image's rows, written last: a rerun resumes from them
    inference.json         the model and settings of the folder's predictions (not mixed)

A file that cannot be read is reported and skipped; the exit status is non-zero only when no
image could be processed. The work is ``shipseg.predict.batch``; this file is its command line.
"""

from __future__ import annotations

import argparse
import sys

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg import cli
from shipseg.predict import batch
from shipseg.predict.batch import InferenceSettings

DEFAULTS = cli.defaults_of(InferenceSettings)


def settings_from(args: argparse.Namespace) -> InferenceSettings:
    """The command line as ``InferenceSettings``."""
    return InferenceSettings(
        images=tuple(args.images),
        model=args.model,
        results_dir=args.results_dir,
        out=args.out,
        batch_size=args.batch_size,
        labels=args.labels,
        overlays=not args.no_overlays,
        pixel_size=args.pixel_size,
        overwrite=args.overwrite,
        tile_above=args.tile_above,
        tile=args.tile,
        overlap=args.overlap,
        overrides=tuple(cli.postprocess_overrides(args).items()),
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``inference.py``."""
    parser = argparse.ArgumentParser(
        description="Predict ship masks, overlays and a Kaggle submission for images.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--model", help="a .keras model (default: the latest results/*/final/model.keras)"
    )
    parser.add_argument("--results-dir", default=DEFAULTS.results_dir)
    parser.add_argument("--out", help="output folder (default: results/<project>/predictions)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per forward pass (default: 2 on a CPU; on a GPU, "
        "half the most that fit in its memory)",
    )
    cli.add_postprocess_options(parser.add_argument_group("post-processing"))
    _output_options(parser)
    cli.add_scene_options(parser.add_argument_group("large scenes"))
    return parser


def _output_options(parser) -> None:
    """Scores, overlays, metres and resuming."""
    parser.add_argument(
        "--labels", help="a ship CSV (ImageId,EncodedPixels) to score the predictions"
    )
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=DEFAULTS.pixel_size,
        help="metres per pixel, for the ships' length and width in metres (Airbus: 1.5)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output folder's earlier predictions instead of resuming them (needed "
        "to change the model or settings of a folder)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when no image could be processed)."""
    return cli.main("inference.py", build_parser(), run_command, argv)


def run_command(args: argparse.Namespace) -> int:
    """``run_inference``; exit status 1 when no image could be processed."""
    if batch.run_inference(settings_from(args))["processed"] == 0:
        print("inference.py: error: no image could be processed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
