"""What ``inference.py`` runs: images to ships, masks, overlays, tables and scores, resumably.

The network predicts batches on the calling thread while worker threads post-process, draw,
write and score the images already predicted (``finish_in_threads``); large scenes go tile by
tile (``shipseg.predict.tiling``). Each image's record is written last (``records``), so a
rerun resumes where a stopped one ended.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import atomic, errors, locks, runtime
from shipseg.data import airbus
from shipseg.data.rle import ships_to_label_image
from shipseg.model import loading
from shipseg.predict import detection, drawing, prediction, records, tiling
from shipseg.predict.prediction import Prediction
from shipseg.scoring import metrics as scoring
from shipseg.scoring import ships

# Post-processing threads (PNG encoding and connected components release the GIL): one per
# core this process may use, at least two, so that a machine with a GPU and many cores is not
# held up by them; capped, so that images in flight stay few.
POSTPROCESS_WORKERS = min(16, max(2, runtime.usable_cores()))
# Predicted images waiting for post-processing: enough to keep the workers busy, few enough
# that memory does not grow with the number of images.
MAX_IMAGES_IN_FLIGHT = 2 * POSTPROCESS_WORKERS


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """Everything one inference is told, built once from its command line (``--help``).

    ``overrides`` are the post-processing flags over the model's tuned values, as
    ``(name, value)`` pairs (see ``detection.load_settings``). ``batch_size`` None sizes the
    batches to the device (``prediction.device_batch_size``: 2 on a CPU, what fits a GPU).
    """

    images: tuple[str, ...]
    model: str | None = None
    results_dir: str = "results"
    out: str | None = None
    batch_size: int | None = None
    labels: str | None = None
    overlays: bool = True
    pixel_size: float = ships.DEFAULT_PIXEL_SIZE
    overwrite: bool = False
    tile_above: int = tiling.DEFAULT_LIMIT
    tile: int = tiling.DEFAULT_TILE
    overlap: int = tiling.DEFAULT_OVERLAP
    overrides: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        """Raises ``errors.UserError`` (naming the option) for a setting out of its range."""
        if self.batch_size is not None and self.batch_size < 1:
            raise errors.UserError("--batch-size must be at least 1")
        tiling.check_scene_options(self.tile, self.tile_above, self.overlap)


# ---------------------------------------------------------------------------------------------
# Model and settings
# ---------------------------------------------------------------------------------------------


def load_settings(model_path: Path, settings: InferenceSettings):
    """Input handling and post-processing: the model's tuned settings, then the flags."""
    return detection.load_settings(model_path, dict(settings.overrides))


# ---------------------------------------------------------------------------------------------
# Per-image outputs
# ---------------------------------------------------------------------------------------------


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
    labels = scoring.probabilities_to_ships(probabilities, postprocess, ship_probability)
    write_pictures(path, labels, out_dir, overlays, image)
    return labels


def write_pictures(
    path: Path, labels: np.ndarray, out_dir: Path, overlays: bool, image: np.ndarray | None
) -> None:
    """Writes an image's mask PNG, and its overlay (reading the image if ``image`` is None).

    Args:
        path: The image file; its stem names ``masks/<stem>.png`` and ``overlays/<stem>.png``.
        labels: ``(h, w)`` integer label image of the predicted ships (0 is sea), at the
            image's own resolution; the mask PNG has one grey level per ship.
        out_dir: The run's output folder, holding ``masks/`` and ``overlays/``.
        overlays: Whether to write the overlay too (``--no-overlays`` saves its time).
        image: The decoded ``(h, w, 3)`` RGB image (0-255, float or uint8), if already read.
    """
    # Not flushed to disk one by one: the image's record, written last, says they are done.
    mask = detection.mask_png(labels)
    drawing.save_png(out_dir / "masks" / f"{path.stem}.png", mask, durable=False)
    if overlays:
        image = np.asarray(_read_rgb(path)) if image is None else image
        overlay = detection.overlay_png(image, labels)
        drawing.save_png(out_dir / "overlays" / f"{path.stem}.png", overlay, durable=False)


def _read_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def check_files(paths: list[Path]) -> tuple[dict[Path, tuple[int, int]], list[str]]:
    """The readable images with their (height, width), and one-line problems for the others."""
    good, problems = {}, []
    for path in paths:
        problem, size = airbus.inspect_image_file(path)
        if problem is None:
            good[path] = size
        else:
            problems.append(f"{path}: {problem}")
    return good, problems


def load_labels(path: str | None) -> pd.Series | None:
    """Reads ``--labels``, a ship CSV, into each image's ship RLEs (``airbus.read_ship_csv``)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise errors.UserError(f"{path}: labels file not found")
    # Images of any size may be scored: each RLE is checked against its image when scored.
    return airbus.read_ship_csv(path, max_pixels=2**40)


def run_inference(settings: InferenceSettings) -> dict:
    """Predicts every image, writes masks, overlays and ``submission.csv``; optionally scores.

    Memory stays flat however many images there are: post-processing runs in worker
    threads beside the next batch's prediction, at most a few images are in flight, and only
    each image's submission rows are kept. The output folder's lock keeps a second inference
    into it out.

    Returns:
        ``{"processed": int, "skipped": [str], "ships": int, "out_dir": Path,
        "scores": dict or None, "seconds": float}``.
    """
    paths = input_images(settings)
    model_path = loading.find_model(Path(settings.results_dir), settings.model)
    input_config, postprocess = load_settings(model_path, settings)
    scorer = LabelScorer(load_labels(settings.labels))
    out_dir = Path(settings.out) if settings.out else default_output_dir(model_path)
    model, settings = _load_model(model_path, settings, out_dir)
    identity = records.run_identity(
        model_path, _settings_record(input_config, postprocess, settings)
    )
    with locks.hold(out_dir, "--out"):
        done = records.open_run(out_dir, identity, settings.overwrite)
        sizes, skipped = check_files(paths)
        readable = list(sizes)
        for problem in skipped:
            print(f"skipped {problem}", file=sys.stderr)
        todo = _resume(readable, done, settings.batch_size)
        print(
            f"Predicting {len(todo)} images with {model_path} ({postprocess}); writing to {out_dir}"
        )
        scenes = tiling.scene_positions(
            [sizes[path] for path in todo], input_config, settings.tile_above
        )
        new, seconds = predict_images(
            model, todo, scenes, input_config, postprocess, scorer, settings, out_dir
        )
        skipped += _undecoded(todo, new)
        outputs = gather_records(
            readable, {todo[i].name: rec for i, rec in new.items()}, done, out_dir, scorer
        )
        found = records.write_tables(outputs, out_dir)
        scores = scorer.report(out_dir) if scorer.truth is not None else None
    print(
        f"{len(outputs)} images processed, {len(skipped)} skipped, {found} ships found "
        f"in {seconds:.1f} s ({len(outputs) / max(seconds, 1e-9):.2f} images/s); "
        f"submission: {out_dir / 'submission.csv'}"
    )
    return {
        "processed": len(outputs),
        "resumed": len(readable) - len(todo),
        "skipped": skipped,
        "ships": found,
        "out_dir": out_dir,
        "scores": scores,
        "seconds": seconds,
    }


def _load_model(model_path: Path, settings: InferenceSettings, out_dir: Path):
    """The model, and the settings with the batch size sized to the device if none was given.

    A folder being resumed keeps the batch size it was started with (the batches shape the
    last bits of the network's output, so a resumed run must repeat them).

    Raises:
        errors.UserError: When the file changed while it was loaded (a training finishing).
    """
    loaded = records.run_identity(model_path, {})
    model = loading.load_model(model_path)
    if records.run_identity(model_path, {}) != loaded:
        raise errors.UserError(f"{model_path}: replaced while it was being loaded; run again")
    if settings.batch_size is None:
        batch_size = None if settings.overwrite else _earlier_batch_size(out_dir)
        batch_size = batch_size or prediction.device_batch_size(model)
        settings = dataclasses.replace(settings, batch_size=batch_size)
    return model, settings


def _earlier_batch_size(out_dir: Path) -> int | None:
    """The batch size an earlier inference into ``out_dir`` recorded, if there is one."""
    run_file = out_dir / records.RUN_FILE
    if not run_file.is_file():
        return None
    return atomic.read_json(run_file).get("settings", {}).get("batch_size")


def _resume(readable: list[Path], done: dict, batch_size: int) -> list[Path]:
    """The images still to predict, saying how many an earlier run finished."""
    todo = records.to_redo(readable, done, batch_size)
    if len(todo) < len(readable):
        print(f"Resuming: {len(readable) - len(todo)} of {len(readable)} images are done already")
    return todo


def _undecoded(todo: list[Path], predicted: dict) -> list[str]:
    """Reports, and returns, the images the pipeline could not decode (each one skipped)."""
    problems = [
        f"{path}: could not be decoded" for i, path in enumerate(todo) if i not in predicted
    ]
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    return problems


def predict_images(
    model, paths, scenes, input_config, postprocess, scorer, settings, out_dir: Path
):
    """Predicts, post-processes and writes every image; returns its rows by position and the time.

    The images at the positions in ``scenes`` are predicted tile by tile, one at a time.

    Args:
        model: The loaded U-Net (Keras or TFLite, ``loading.load_model``).
        paths: The image files to predict (``list[Path]``), in order: positions index it.
        scenes: Positions in ``paths`` of the large scenes to tile (``tiling.scene_positions``).
        input_config: The training's ``InputConfig`` (crop or resize); None: images as they are.
        postprocess: The ``scoring.PostprocessConfig`` turning probabilities into ships.
        scorer: The ``LabelScorer`` each image is scored by as it is finished.
        settings: Batch size, overlays, pixel size, tile and overlap (``InferenceSettings``).
        out_dir: The run's output folder (masks, overlays and each image's record).

    Returns:
        ``({position: record}, seconds)``: images that could not be decoded have no record.
    """
    finish = functools.partial(
        finish_image,
        paths=paths,
        postprocess=postprocess,
        out_dir=out_dir,
        overlays=settings.overlays,
        scorer=scorer,
        pixel_size=settings.pixel_size,
    )
    start = time.perf_counter()
    images = [position for position in range(len(paths)) if position not in scenes]
    table = pd.DataFrame({"path": [str(paths[position]) for position in images]})
    predictions = prediction.predict_table(
        model, table, input_config, settings.batch_size, postprocess.flip_tta, with_images=True
    )
    in_paths = (p._replace(position=images[p.position]) for p in predictions)
    outputs = finish_in_threads(in_paths, finish, len(images))
    for position in scenes:  # One at a time: a scene's maps are the largest thing in memory.
        scene = tiling.predict_scene_file(
            model,
            paths[position],
            position,
            postprocess,
            settings.tile,
            settings.overlap,
            settings.batch_size,
        )
        outputs[position] = finish(scene)
    return outputs, time.perf_counter() - start


def finish_image(
    prediction: Prediction,
    paths: list[Path],
    postprocess: scoring.PostprocessConfig,
    out_dir: Path,
    overlays: bool,
    scorer: LabelScorer,
    pixel_size: float = ships.DEFAULT_PIXEL_SIZE,
) -> dict:
    """Post-processes, writes and scores one image; returns its record (``predict.records``).

    Often runs in a worker thread. The record is written last: its presence means the image is done.

    Args:
        prediction: One image's prediction; its ``position`` indexes ``paths``.
        paths: The run's image files, as ``predict_images`` was given them.
        postprocess: Thresholds, minimum ship size and gate that turn probabilities into ships.
        out_dir: The run's output folder (masks, overlays, records).
        overlays: Whether to write the overlay PNG.
        scorer: Scores the image against ``--labels`` (a no-op without them).
        pixel_size: Metres per pixel, for the ships' lengths and widths (``--pixel-size``).
    """
    path = paths[prediction.position]
    labels, record = detection.describe(path.name, prediction, postprocess, pixel_size)
    write_pictures(path, labels, out_dir, overlays, prediction.image)
    records.write_record(out_dir, path.name, record)
    scorer.add(path.name, labels, record["ship_score"])
    return record


def gather_records(
    paths: list[Path], new: dict[str, dict], done: set[str], out_dir: Path, scorer: LabelScorer
) -> dict[int, dict]:
    """Every finished image's record by position: this run's, or an earlier run's (scored).

    Args:
        paths: Every readable image of the run, in order: positions are submission order.
        new: This run's records by image file name (``path.name``).
        done: File names of the images an earlier run finished (``records.open_run``).
        out_dir: The run's output folder, where earlier records are read from.
        scorer: Scores each earlier image from its record (this run's were scored already).

    Returns:
        ``{position: record}``; an image in neither ``new`` nor ``done`` (not decoded) is absent.
    """
    outputs = {}
    for position, path in enumerate(paths):
        if path.name in new:
            outputs[position] = new[path.name]
        elif path.name in done:
            outputs[position] = records.read_record(out_dir, path.name)
            scorer.add_record(path.name, outputs[position])
    return outputs


def _settings_record(input_config, postprocess, settings: InferenceSettings) -> dict:
    """The settings that shape an inference's outputs (a resumed run must share them)."""
    return {
        "input": None if input_config is None else dataclasses.asdict(input_config),
        "postprocess": dataclasses.asdict(postprocess),
        "overlays": settings.overlays,
        "pixel_size": settings.pixel_size,
        "batch_size": settings.batch_size,  # Batches shape the last bits of the network's output.
        "tiles": {"above": settings.tile_above, "tile": settings.tile, "overlap": settings.overlap},
    }


def input_images(settings: InferenceSettings) -> list[Path]:
    """The image files to predict, checked: found and uniquely named."""
    try:
        paths = airbus.list_images(settings.images)
    except errors.DataError as error:
        raise errors.UserError(str(error)) from None
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        duplicate = next(stem for stem in stems if stems.count(stem) > 1)
        raise errors.UserError(
            f"several input images are named {duplicate}.*: masks and overlays are named by the "
            "image name, so each must be unique"
        )
    return paths


def finish_in_threads(predictions, finish, total: int) -> dict[int, dict]:
    """Runs ``finish(prediction)`` in worker threads beside the next predictions.

    At most ``MAX_IMAGES_IN_FLIGHT`` images wait, so memory does not grow with their number.

    Args:
        predictions: ``Prediction``s, each with its ``position``, consumed lazily on this
            thread: a generator's next batch is predicted while workers finish earlier ones.
        finish: Called once per prediction in a worker thread, so it must be thread-safe.
        total: How many predictions to expect (the progress bar's length only).

    Returns:
        Each finished image's result by its position.

    Raises:
        Exception: Whatever ``finish`` raised, when its result is collected.
    """
    from tqdm import tqdm

    results: dict[int, dict] = {}
    pending: collections.deque = collections.deque()
    with (
        tqdm(total=total, unit="image", desc="inference") as progress,
        concurrent.futures.ThreadPoolExecutor(
            POSTPROCESS_WORKERS, initializer=_yield_to_the_network
        ) as workers,
    ):
        for prediction in predictions:
            pending.append((prediction.position, workers.submit(finish, prediction)))
            while len(pending) > MAX_IMAGES_IN_FLIGHT or (pending and pending[0][1].done()):
                position, future = pending.popleft()
                results[position] = future.result()
                progress.update(1)
        for position, future in pending:
            results[position] = future.result()
            progress.update(1)
    return results


class LabelScorer:
    """Scores predictions against ``--labels`` as they come, from several threads."""

    def __init__(self, truth: pd.Series | None):
        self.truth = truth
        self.scoreboard = scoring.Scoreboard()
        self.unlabelled: list[str] = []
        self.unscorable: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str, labels: np.ndarray, ship_score: float) -> None:
        """Scores one image's predicted label image (no-op without labels).

        Args:
            name: The image's file name, looked up in the labels' ``ImageId`` index; one
                missing there is counted in ``unlabelled`` instead.
            labels: ``(h, w)`` label image of the predicted ships (0 is sea), after the gate;
                an image whose true masks do not fit this shape goes to ``unscorable``.
            ship_score: The image's ship evidence in [0, 1] (the ship head's probability, or
                the top pixel probability), for the ship/no-ship ROC AUC.
        """
        if self.truth is None:
            return
        with self._lock:
            if name not in self.truth.index:
                self.unlabelled.append(name)
                return
            try:
                true_labels = ships_to_label_image(self.truth[name], labels.shape)
            except ValueError as error:  # The labels' masks do not fit this image.
                self.unscorable.append(f"{name}: {error}")
                return
            self.scoreboard.add(true_labels, labels, ship_score)

    def add_record(self, name: str, record: dict) -> None:
        """Scores an image done by an earlier run, from its record's submission rows."""
        if self.truth is None:
            return
        rles = [rle for _, rle in record["rows"] if rle]
        self.add(name, ships_to_label_image(rles, tuple(record["shape"])), record["ship_score"])

    def report(self, out_dir: Path) -> dict:
        """Prints and writes (``scores.json``) the scores of the labelled predictions."""
        for problem in self.unscorable:
            print(f"not scored: {problem}", file=sys.stderr)
        return report_scores(self.scoreboard, self.unlabelled, out_dir)


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
    return loading.project_folder(model_path) / "predictions"


def report_scores(scoreboard: scoring.Scoreboard, unlabelled: list[str], out_dir: Path) -> dict:
    """Prints and writes (``scores.json``) the scores of the labelled predictions.

    Args:
        scoreboard: The scores accumulated over the labelled images.
        unlabelled: Names of predicted images with no row in the labels file: counted in
            ``images_without_labels``, and the first three named on stderr.
        out_dir: The run's output folder, where ``scores.json`` is written atomically.

    Returns:
        ``Scoreboard.results()`` with ``images_without_labels`` added.
    """
    scores = {**scoreboard.results(), "images_without_labels": len(unlabelled)}
    if unlabelled:
        print(
            f"{len(unlabelled)} images have no row in the labels file and are not scored "
            f"(first: {', '.join(sorted(unlabelled)[:3])})",
            file=sys.stderr,
        )
    atomic.write_json_atomically(out_dir / "scores.json", scores)
    print(
        f"Scores on {scores['images']} labelled images: instance F2 {scores['f2']:.4f} "
        f"(no-ship baseline {scores['f2_no_ship_baseline']:.4f}), pixel Dice {scores['dice']:.4f}, "
        f"Dice on ship images {scores['dice_ship_images']:.4f}"
    )
    return scores
