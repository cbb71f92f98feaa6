"""Find ships in images and write a Kaggle submission: ``python inference.py IMAGES...``.

IMAGES are files, folders or glob patterns (JPEG or PNG, RGB or grayscale, any size). The model
defaults to the latest ``results/*/final/model.keras``; its ``config.json`` supplies the input
handling and the post-processing tuned on validation images, each of which a flag may override.

Writes to ``--out`` (default: ``results/<project>/predictions/``):

    masks/<image>.png      the predicted ships, one grey level per ship (0 = sea)
    overlays/<image>.png   the image in grey with the predicted ships in red
    submission.csv         ImageId,EncodedPixels: one row per ship, one empty row per image
                           without ships (the Kaggle format)
    images.csv             one row per image: the ship head's probability (the learnt "is
                           there a ship?"), the top pixel probability, and the ships kept
    scores.json            with ``--labels``: pixel Dice and instance F2 against a ship CSV

A file that cannot be read is reported and skipped; the exit status is non-zero only when no
image could be processed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import json
import os
import sys
import threading
import time
import zlib
from pathlib import Path

import pipeline  # noqa: E402, I001  (first: TensorFlow is imported quietly below)

pipeline.import_tensorflow_quietly()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import evaluation  # noqa: E402

# Post-processing threads (PNG encoding and connected components release the GIL): one per
# core this process may use, at least two, so that a machine with a GPU and many cores is not
# held up by them; capped, so that images in flight stay few.
POSTPROCESS_WORKERS = min(16, max(2, pipeline.usable_cores()))
# Predicted images waiting for post-processing: enough to keep the workers busy, few enough
# that memory does not grow with the number of images.
MAX_IMAGES_IN_FLIGHT = 2 * POSTPROCESS_WORKERS


class InferenceError(Exception):
    """A user error (model, paths, labels): printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``inference.py``."""
    parser = argparse.ArgumentParser(
        description="Predict ship masks, overlays and a Kaggle submission for images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--model", help="a .keras model (default: the latest results/*/final/model.keras)"
    )
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--out", help="output folder (default: results/<project>/predictions)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--threshold", type=float, help="pixel probability threshold (default: tuned)"
    )
    parser.add_argument(
        "--image-threshold",
        type=float,
        help="an image has ships only if its top probability reaches this (default: tuned)",
    )
    parser.add_argument(
        "--ship-threshold",
        type=float,
        help="for a model with a ship head: an image has ships only if the head's probability "
        "reaches this (default: tuned)",
    )
    parser.add_argument("--min-ship-pixels", type=int, help="drop smaller ships (default: tuned)")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average predictions over flips (3x slower)",
    )
    parser.add_argument(
        "--labels", help="a ship CSV (ImageId,EncodedPixels) to score the predictions"
    )
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    return parser


# ---------------------------------------------------------------------------------------------
# Model and settings
# ---------------------------------------------------------------------------------------------


def find_model(results_dir: Path, model: str | None) -> Path:
    """The given model file, or the most recently trained ``results/*/final/model.keras``."""
    if model:
        path = Path(model)
        if not path.is_file():
            raise InferenceError(f"{path}: model file not found")
        return path
    models = sorted(results_dir.glob("*/final/model.keras"), key=lambda p: p.stat().st_mtime)
    if not models:
        raise InferenceError(
            f"{results_dir}: no trained model found; run python train.py --best first, "
            "or pass --model"
        )
    return models[-1]


def load_model(path: Path):
    """Loads a U-Net saved by ``train.py`` and checks that it maps RGB images to one channel."""
    import keras

    import hypermodel  # registers the custom losses and metrics

    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a bad or foreign file.
        raise InferenceError(
            f"{path}: cannot load the model ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from None
    # A model with a ship head returns {"ship_probability": mask, "has_ship": probability}.
    output = (
        model.output["ship_probability"] if hypermodel.has_ship_head(model) else model.outputs[0]
    )
    if (
        len(model.inputs) != 1
        or model.inputs[0].shape[-1] != 3
        or len(output.shape) != 4
        or output.shape[-1] != 1
    ):
        raise InferenceError(
            f"{path}: not a ship U-Net (expects one RGB input and one mask output, "
            f"got {model.inputs[0].shape} -> {output.shape})"
        )
    return model


def load_settings(model_path: Path, args: argparse.Namespace):
    """Input handling and post-processing: the model's ``config.json``, then the flags.

    Returns:
        ``(InputConfig or None, PostprocessConfig)``.
    """
    config_path = model_path.parent / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if not config:
        print(
            f"warning: {config_path} not found: predicting at full resolution with default "
            "post-processing unless flags say otherwise",
            file=sys.stderr,
        )
    elif config.get("status") != "complete" or "postprocess" not in config:
        print(
            f"warning: {config_path} says training is not complete: its post-processing was not "
            "tuned yet, using defaults unless flags say otherwise",
            file=sys.stderr,
        )
    input_config = pipeline.InputConfig(**config["input"]) if "input" in config else None
    postprocess = evaluation.PostprocessConfig(**config.get("postprocess", {}))
    overrides = {
        "threshold": args.threshold,
        "image_threshold": args.image_threshold,
        "ship_threshold": args.ship_threshold,
        "min_ship_pixels": args.min_ship_pixels,
        "flip_tta": args.tta,
    }
    postprocess = dataclasses.replace(
        postprocess, **{k: v for k, v in overrides.items() if v is not None}
    )
    for name in ("threshold", "image_threshold", "ship_threshold"):
        # Only flags are checked: a tuned threshold may sit just above 1 ("no image opens").
        if overrides[name] is not None and not 0 <= overrides[name] <= 1:
            raise InferenceError(f"--{name.replace('_', '-')} must be in [0, 1]")
    return input_config, postprocess


# ---------------------------------------------------------------------------------------------
# Per-image outputs
# ---------------------------------------------------------------------------------------------


def ship_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
    """Submission rows of one image: one per ship, or one empty row when there is none."""
    rows = [
        (image_id, pipeline.rle_encode(labels == ship)) for ship in range(1, int(labels.max()) + 1)
    ]
    return rows or [(image_id, "")]


# images.csv: one row per image, beside submission.csv.
IMAGE_COLUMNS = ("ImageId", "ship_probability", "top_pixel_probability", "ships")


def image_row(image_id: str, prediction: evaluation.Prediction, labels: np.ndarray) -> tuple:
    """One row of ``images.csv``: the image's ship evidence and how many ships were kept.

    ``ship_probability`` is the ship head's (empty for a model without a head): the learnt
    answer to "is there a ship?", which gates the image's ships at the tuned threshold.
    """
    return (
        image_id,
        "" if prediction.ship_probability is None else round(prediction.ship_probability, 6),
        round(float(prediction.probabilities.max(initial=0.0)), 6),
        int(labels.max(initial=0)),
    )


def label_png(labels: np.ndarray) -> np.ndarray:
    """A grey-level picture of a label image: sea 0, ships spread over 255 down to 55."""
    if labels.max() == 0:
        return np.zeros(labels.shape, dtype=np.uint8)
    levels = np.concatenate([[0], np.linspace(255, 55, int(labels.max()))]).astype(np.uint8)
    return levels[labels]


def encode_png(
    picture: np.ndarray,
    palette: np.ndarray | None = None,
    strategy: int = zlib.Z_RLE,
) -> bytes:
    """Encodes an 8-bit grey ``(h, w)``, RGB ``(h, w, 3)`` or palette picture as PNG.

    Every row uses PNG's "up" filter (the difference to the row above) and zlib's fastest level:
    for satellite pictures that is smaller than Pillow's PNG at its fastest level, and about
    twice as fast. Speed matters: a mask and an overlay are written for every image, on the
    same cores as the network.

    Args:
        picture: ``uint8`` pixels, or palette indices when ``palette`` is given.
        palette: ``(n, 3)`` uint8 RGB colours (n <= 256) for a 2-D ``picture`` of indices.
        strategy: zlib's strategy. ``zlib.Z_RLE`` (the default) suits masks, mostly runs of
            zeros; ``zlib.Z_HUFFMAN_ONLY`` suits photographs: at 768 x 768, 4 ms against zlib's
            default 7 ms, and 7 % smaller.

    Returns:
        The PNG file's bytes.
    """
    import struct

    if picture.dtype != np.uint8 or picture.ndim not in (2, 3):
        raise ValueError(
            f"expected uint8 (h, w) or (h, w, 3) pixels, got {picture.dtype} {picture.shape}"
        )
    height, width = picture.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"a PNG needs at least one pixel, got {picture.shape}")
    channels = 1 if picture.ndim == 2 else picture.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {channels}")
    if palette is not None and (
        channels != 1
        or palette.dtype != np.uint8
        or palette.shape[1:] != (3,)
        or len(palette) > 256
    ):
        raise ValueError("a palette is (n <= 256, 3) uint8 colours for a 2-D picture of indices")
    rows = picture.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "up"
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG wants

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    colour_type = 3 if palette is not None else 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"PLTE", palette.tobytes()) if palette is not None else b"",
            chunk(b"IDAT", _deflate(filtered.tobytes(), strategy)),
            chunk(b"IEND", b""),
        ]
    )


def _deflate(data: bytes, strategy: int) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
    return compressor.compress(data) + compressor.flush()


@functools.lru_cache(maxsize=8)
def _empty_mask_png(height: int, width: int) -> bytes:
    # Most images have no ship: their masks are all alike.
    return encode_png(np.zeros((height, width), dtype=np.uint8))


def save_png(
    path: Path,
    picture: np.ndarray | bytes,
    palette: np.ndarray | None = None,
    strategy: int = zlib.Z_RLE,
) -> None:
    """Writes a picture (or an encoded PNG's bytes) as PNG, atomically (see ``encode_png``)."""
    data = picture if isinstance(picture, bytes) else encode_png(picture, palette, strategy)
    pipeline.write_atomically(path, lambda temporary: Path(temporary).write_bytes(data))


def _overlay_palette(alpha: float = 0.55) -> np.ndarray:
    grey = np.arange(128) * 255 // 127
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:128] = grey[:, None]
    palette[128:, 0] = (1 - alpha) * grey + alpha * 255
    palette[128:, 1:] = ((1 - alpha) * grey)[:, None]
    return palette


# Indices 0-127: 128 grey levels of the image; 128-255: the same levels tinted red (ships).
OVERLAY_PALETTE = _overlay_palette()
_LUMA_TO_GREY_INDEX = (77 / 512, 150 / 512, 29 / 512)


def overlay_indices(image: np.ndarray, ships: np.ndarray | None) -> np.ndarray:
    """The overlay of predicted ships on an image, as indices into ``OVERLAY_PALETTE``.

    The image is shown in grey and the ships in red. One byte per pixel against three: the
    overlay PNG is about a third of the size of a colour one and written in about a third of
    the time, and red ships stand out better on grey.

    Args:
        image: ``(h, w, 3)`` RGB in 0-255 (uint8 or float).
        ships: ``(h, w)`` boolean mask of predicted ship pixels, or None for none.

    Returns:
        ``(h, w)`` uint8 palette indices.
    """
    # Luma (ITU-R BT.601 weights, 77 + 150 + 29 = 256) scaled to 0-127. Element-wise on
    # purpose: a matrix product would wake BLAS's threads, which spin and starve the network.
    rgb = np.asarray(image, dtype=np.float32)
    red, green, blue = _LUMA_TO_GREY_INDEX
    luma = rgb[..., 0] * red
    luma += rgb[..., 1] * green
    luma += rgb[..., 2] * blue
    indices = luma.astype(np.uint8)
    if ships is not None:
        indices[ships] += 128
    return indices


def process_prediction(
    path: Path,
    probabilities: np.ndarray,
    postprocess,
    out_dir: Path,
    overlays: bool,
    image: np.ndarray | None = None,
    ship_probability: float | None = None,
) -> np.ndarray:
    """Post-processes one image's probabilities and writes its mask (and overlay) PNG.

    Args:
        path: The image file (names the outputs; read again for the overlay if ``image`` is None).
        probabilities: The image's ship probabilities.
        postprocess: Thresholds and minimum ship size.
        out_dir: Output folder (``masks/`` and ``overlays/`` are created in it).
        overlays: Whether to write the overlay.
        image: The decoded RGB image, when the caller already has it.
        ship_probability: The ship head's probability for the image (None without a head).

    Returns:
        The label image of the predicted ships.
    """
    labels = evaluation.probabilities_to_ships(probabilities, postprocess, ship_probability)
    has_ships = bool(labels.any())
    save_png(
        out_dir / "masks" / f"{path.stem}.png",
        label_png(labels) if has_ships else _empty_mask_png(*labels.shape),
    )
    if overlays:
        image = np.asarray(_read_rgb(path)) if image is None else image
        save_png(
            out_dir / "overlays" / f"{path.stem}.png",
            overlay_indices(image, labels > 0 if has_ships else None),
            OVERLAY_PALETTE,
            zlib.Z_HUFFMAN_ONLY,
        )
    return labels


def _read_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def check_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Splits paths into readable images and one-line problems for the others."""
    good, problems = [], []
    for path in paths:
        problem, _ = pipeline.inspect_image_file(path)
        if problem is None:
            good.append(path)
        else:
            problems.append(f"{path}: {problem}")
    return good, problems


def load_labels(path: str | None) -> pd.DataFrame | None:
    """Reads a ship CSV for scoring, one row per image (see ``pipeline.read_dataset``)."""
    if path is None:
        return None
    csv_path = Path(path)
    if not csv_path.is_file():
        raise InferenceError(f"{csv_path}: labels file not found")
    try:
        rows = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InferenceError(f"{csv_path}: not a readable CSV ({error})") from None
    if list(rows.columns) != list(pipeline.CSV_COLUMNS):
        raise InferenceError(
            f"{csv_path}: columns are {list(rows.columns)}, expected {list(pipeline.CSV_COLUMNS)}"
        )
    for line, (image_id, rle) in enumerate(
        zip(rows.ImageId, rows.EncodedPixels, strict=True), start=2
    ):
        try:
            pipeline.parse_rle(rle, 2**40)
        except ValueError as error:
            raise InferenceError(f"{csv_path}, line {line} ({image_id}): {error}") from None
    return rows.groupby("ImageId").EncodedPixels.agg(
        lambda rles: tuple(r for r in rles if r.strip())
    )


def run_inference(args: argparse.Namespace) -> dict:
    """Predicts every image, writes masks, overlays and ``submission.csv``; optionally scores.

    Memory stays flat however many images there are: post-processing runs in worker
    threads beside the next batch's prediction, at most a few images are in flight, and only
    each image's submission rows are kept.

    Returns:
        ``{"processed": int, "skipped": [str], "ships": int, "out_dir": Path,
        "scores": dict or None, "seconds": float}``.
    """
    from tqdm import tqdm

    try:
        paths = pipeline.list_images(args.images)
    except pipeline.DataError as error:
        raise InferenceError(str(error)) from None
    if args.batch_size < 1:
        raise InferenceError("--batch-size must be at least 1")
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        duplicate = next(stem for stem in stems if stems.count(stem) > 1)
        raise InferenceError(
            f"several input images are named {duplicate}.*: masks and overlays are named by the "
            "image name, so each must be unique"
        )
    model_path = find_model(Path(args.results_dir), args.model)
    input_config, postprocess = load_settings(model_path, args)
    truth = load_labels(args.labels)
    model = load_model(model_path)
    out_dir = Path(args.out) if args.out else default_output_dir(model_path)

    readable, skipped = check_files(paths)
    for problem in skipped:
        print(f"skipped {problem}", file=sys.stderr)
    table = pd.DataFrame({"path": [str(path) for path in readable]})
    print(f"Predicting {len(table)} images with {model_path} ({postprocess}); writing to {out_dir}")

    scoreboard, score_lock, unlabelled = evaluation.Scoreboard(), threading.Lock(), []

    def finish_image(prediction: evaluation.Prediction):
        path = readable[prediction.position]
        labels = process_prediction(
            path,
            prediction.probabilities,
            postprocess,
            out_dir,
            not args.no_overlays,
            prediction.image,
            prediction.ship_probability,
        )
        if truth is not None:
            if path.name in truth.index:
                true_labels = pipeline.ships_to_label_image(truth[path.name], labels.shape)
                with score_lock:
                    scoreboard.add(true_labels, labels, evaluation.ship_score(prediction))
            else:
                unlabelled.append(path.name)
        return ship_rows(path.name, labels), image_row(path.name, prediction, labels)

    start = time.perf_counter()
    rows_by_position: dict[int, list] = {}
    pending: collections.deque = collections.deque()
    with (
        tqdm(total=len(table), unit="image", desc="inference") as progress,
        concurrent.futures.ThreadPoolExecutor(
            POSTPROCESS_WORKERS, initializer=_yield_to_the_network
        ) as workers,
    ):
        for prediction in evaluation.predict_table(
            model, table, input_config, args.batch_size, postprocess.flip_tta, with_images=True
        ):
            pending.append((prediction.position, workers.submit(finish_image, prediction)))
            while len(pending) > MAX_IMAGES_IN_FLIGHT or (pending and pending[0][1].done()):
                done_position, future = pending.popleft()
                rows_by_position[done_position] = future.result()
                progress.update(1)
        for done_position, future in pending:
            rows_by_position[done_position] = future.result()
            progress.update(1)
    for position, path in enumerate(readable):
        if position not in rows_by_position:
            skipped.append(f"{path}: could not be decoded")
            print(f"skipped {path}: could not be decoded", file=sys.stderr)

    done = sorted(rows_by_position)
    rows = [row for position in done for row in rows_by_position[position][0]]
    submission = pd.DataFrame(rows, columns=list(pipeline.CSV_COLUMNS))
    images = pd.DataFrame(
        [rows_by_position[position][1] for position in done], columns=IMAGE_COLUMNS
    )
    if rows:
        pipeline.write_atomically(
            out_dir / "submission.csv", lambda temporary: submission.to_csv(temporary, index=False)
        )
        pipeline.write_atomically(
            out_dir / "images.csv", lambda temporary: images.to_csv(temporary, index=False)
        )
    seconds = time.perf_counter() - start
    scores = report_scores(scoreboard, unlabelled, out_dir) if truth is not None else None
    processed, ships = len(rows_by_position), int((submission.EncodedPixels != "").sum())
    print(
        f"{processed} images processed, {len(skipped)} skipped, {ships} ships found "
        f"in {seconds:.1f} s ({processed / max(seconds, 1e-9):.2f} images/s); "
        f"submission: {out_dir / 'submission.csv'}"
    )
    return {
        "processed": processed,
        "skipped": skipped,
        "ships": ships,
        "out_dir": out_dir,
        "scores": scores,
        "seconds": seconds,
    }


def _yield_to_the_network() -> None:
    """Lowers this post-processing thread's priority below TensorFlow's threads (Linux).

    A convolution split over all cores waits for its slowest part: a post-processing thread
    that takes a core from it in the middle costs more than its own time. At a lower priority
    it runs in the network's gaps instead; the bounded queue of images in flight makes the
    network wait for it when it falls behind.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass  # Not Linux, or not allowed: same results, a little slower.


def default_output_dir(model_path: Path) -> Path:
    """``results/<project>/predictions`` for a model of ``train.py``, else beside the model."""
    if model_path.parent.name == "final":
        return model_path.parent.parent / "predictions"
    return model_path.parent / "predictions"


def report_scores(scoreboard: evaluation.Scoreboard, unlabelled: list[str], out_dir: Path) -> dict:
    """Prints and writes (``scores.json``) the scores of the labelled predictions."""
    scores = {**scoreboard.results(), "images_without_labels": len(unlabelled)}
    if unlabelled:
        print(
            f"{len(unlabelled)} images have no row in the labels file and are not scored "
            f"(first: {', '.join(sorted(unlabelled)[:3])})",
            file=sys.stderr,
        )
    pipeline.write_json_atomically(out_dir / "scores.json", scores)
    print(
        f"Scores on {scores['images']} labelled images: instance F2 {scores['f2']:.4f} "
        f"(no-ship baseline {scores['f2_no_ship_baseline']:.4f}), pixel Dice {scores['dice']:.4f}, "
        f"Dice on ship images {scores['dice_ship_images']:.4f}"
    )
    return scores


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (non-zero when no image could be processed)."""
    args = build_parser().parse_args(argv)
    try:
        result = run_inference(args)
    except (InferenceError, pipeline.DataError) as error:
        print(f"inference.py: error: {error}", file=sys.stderr)
        return 2
    if result["processed"] == 0:
        print("inference.py: error: no image could be processed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
