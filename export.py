"""Export a trained model for serving: ``python export.py [--model PATH] [--out DIR]``.

Writes, into ``--out`` (default: ``results/<project>/export/``), all or nothing:

    saved_model/    a TensorFlow SavedModel (``tf.saved_model.load(path).serve(images)``; TF
                    Serving), input ``(n, size, size, 3)`` float32 RGB in 0-255
    model.tflite    the same network for TFLite (``inference.py --model .../model.tflite``)
    export.json     the input format, the outputs, the post-processing ``train.py`` tuned, the
                    training's input settings, and the parity measured against the .keras model

Parity is measured at export on real images (the first two of the training's test split, or the
``--parity-images`` given; seeded random images when neither exists) and printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from shipseg.core import errors, runtime  # noqa: I001  (first: it imports TensorFlow quietly)
from shipseg.predict import prediction

runtime.import_tensorflow_quietly()

import numpy as np

import pipeline
from shipseg import cli
from shipseg.core import atomic
from shipseg.data import airbus, splits
from shipseg.model import exporting, loading


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What one export is told (``python export.py --help``), built once from its command line."""

    model: str | None = None
    results_dir: str = "results"
    out: str | None = None
    image_size: int = exporting.DEFAULT_IMAGE_SIZE
    parity_images: tuple[str, ...] | None = None

    def __post_init__(self):
        """Raises ``errors.UserError`` for an image size the exported U-Net cannot take."""
        if self.image_size < 1 or self.image_size % prediction.SIZE_MULTIPLE:
            raise errors.UserError(
                f"--image-size must be a positive multiple of {prediction.SIZE_MULTIPLE}"
            )


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
    return parser


def settings_from(args: argparse.Namespace) -> ExportSettings:
    """The command line as ``ExportSettings``."""
    images = tuple(args.parity_images) if args.parity_images else None
    return ExportSettings(args.model, args.results_dir, args.out, args.image_size, images)


def run_export(settings: ExportSettings) -> dict:
    """Loads the model, exports it, and prints where and how close the exports are."""
    model_path = loading.find_model(Path(settings.results_dir), settings.model)
    if model_path.suffix != ".keras":
        raise errors.UserError(f"{model_path}: export takes the .keras model that train.py wrote")
    model = loading.load_model(model_path)
    config_path = model_path.parent / "config.json"
    config = atomic.read_json(config_path) if config_path.is_file() else {}
    size = settings.image_size
    images = parity_images(settings.parity_images, config, size)
    out_dir = Path(settings.out) if settings.out else loading.project_folder(model_path) / "export"
    print(f"Exporting {model_path} at {size} x {size} to {out_dir} ...")
    record = exporting.export_model(model, model_path, out_dir, size, config, images)
    differences = record["parity_max_abs_difference"]
    print(
        f"Wrote {out_dir / exporting.SAVED_MODEL}, {out_dir / exporting.TFLITE} and "
        f"{out_dir / exporting.EXPORT_JSON}; largest difference from the .keras model on "
        f"{len(images)} images: SavedModel {differences['saved_model']:.1e}, "
        f"TFLite {differences['tflite']:.1e}"
    )
    return record


def parity_images(paths: tuple[str, ...] | None, config: dict, size: int) -> np.ndarray:
    """``(n, size, size, 3)`` images: the given ones, two of the test split, or random ones.

    Args:
        paths: Image files to measure parity on (``--parity-images``); None or empty picks the
            first two test images (by name) of the training's split, if ``config`` has one.
        config: The training's ``config.json`` (``{}`` when missing); its ``split_file`` and
            ``data_dir`` locate the test images.
        size: Height and width of the exported input, in pixels: each image is cropped from
            its top-left corner to fit, smaller ones zero-padded.

    Returns:
        float32 RGB in 0-255; two seeded uniform-noise images when no real image is found.

    Raises:
        errors.UserError: For a path in ``paths`` (or from the split) that is not a file.
    """
    if not paths and config.get("split_file") and Path(config["split_file"]).is_file():
        layout = airbus.find_layout(config["data_dir"])
        split = splits.load_split(config["split_file"])
        names = sorted(split.ImageId[split.split == "test"])[:2]
        paths = [str(layout.train_dir / name) for name in names]
    if not paths:
        return np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    batch = np.zeros((len(paths), size, size, 3), dtype=np.float32)
    for index, path in enumerate(paths):
        if not Path(path).is_file():
            raise errors.UserError(f"{path}: parity image not found")
        image = pipeline.decode_image(path).numpy()[:size, :size]
        batch[index, : image.shape[0], : image.shape[1]] = image
    return batch


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; user errors are one line and exit status 2."""
    return cli.main("export.py", build_parser(), lambda args: run_export(settings_from(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
