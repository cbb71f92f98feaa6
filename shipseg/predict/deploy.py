"""Which exported format to deploy: each one's speed here and, on the test split, its F2.

``export.py`` writes a SavedModel and a TFLite file (``shipseg.model.exporting``); with
``--quantized`` also TFLite's two post-training quantisations that need no calibration data:
float16 weights, and dynamic-range (int8 weights, float activations). Each format, and the
Keras model they came from, is timed with the protocol every trial of a search is timed with
(``latency.LatencyProtocol``); with ``--evaluate`` each is scored on the training's test split
with its tuned post-processing, and compared image by image with the Keras model: what a
faster format costs in F2, with a 95 % paired interval.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from shipseg.core import atomic, errors
from shipseg.data import airbus, inputs, splits
from shipseg.model import exporting, loading
from shipseg.predict import detection, latency, prediction
from shipseg.scoring import metrics


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What one export is told (``python export.py --help``), built once from its command line."""

    model: str | None = None
    results_dir: str = "results"
    out: str | None = None
    image_size: int = exporting.DEFAULT_IMAGE_SIZE
    parity_images: tuple[str, ...] | None = None
    quantized: bool = False
    evaluate: bool = False
    latency_runs: int = latency.LatencyProtocol.runs

    def __post_init__(self):
        """Raises ``errors.UserError`` for an image size the exported U-Net cannot take."""
        if self.image_size < 1 or self.image_size % prediction.SIZE_MULTIPLE:
            raise errors.UserError(
                f"--image-size must be a positive multiple of {prediction.SIZE_MULTIPLE}"
            )
        if self.latency_runs < 1:
            raise errors.UserError("--latency-runs must be at least 1")


class SavedModelPredictor:
    """A SavedModel's ``serve`` behind ``predict_on_batch``, padding as ``TFLiteModel`` does."""

    def __init__(self, path: Path, image_size: int):
        import tensorflow as tf

        # Kept: its variables live as long as the loaded object, not as long as ``serve``.
        self.loaded = tf.saved_model.load(str(path))
        self.serve = self.loaded.serve
        self.size = image_size

    def predict_on_batch(self, images: np.ndarray):
        """Probabilities for ``(n, h, w, 3)`` images no larger than the exported size."""
        padded, (height, width) = exporting.pad_to_size(images, self.size, self.size)
        output = self.serve(padded)
        output = output if isinstance(output, dict) else {"ship_probability": output}
        outputs = {name: np.asarray(value) for name, value in output.items()}
        pixels = outputs["ship_probability"][:, :height, :width]
        return {**outputs, "ship_probability": pixels} if "has_ship" in outputs else pixels


def predictors(model, export_dir: Path, image_size: int) -> dict[str, tuple[object, float]]:
    """Each format's model (with ``predict_on_batch``) and its files' size in MiB.

    The Keras model's size is its weights' (the ``.keras`` file adds the optimizer's state).

    Args:
        model: The Keras model that was exported.
        export_dir: The export folder (the SavedModel, the TFLite files).
        image_size: The exported input's side.
    """
    formats = {"keras": (model, latency.weights_mib(model))}
    formats["saved_model"] = (
        SavedModelPredictor(export_dir / exporting.SAVED_MODEL, image_size),
        _mib(export_dir / exporting.SAVED_MODEL),
    )
    files = {"tflite": exporting.TFLITE, **exporting.QUANTIZED}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation
        for name, file_name in files.items():
            if (export_dir / file_name).is_file():
                path = export_dir / file_name
                formats[name] = (exporting.TFLiteModel(path), _mib(path))
    return formats


def _mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def time_formats(model, formats: dict, protocol: latency.LatencyProtocol) -> dict[str, dict]:
    """Each format's ``latency.Latency`` record, timed one after the other.

    Args:
        model: The Keras model (its parameters and operations are every format's).
        formats: ``predictors``'s result.
        protocol: How each is timed (its image size is the exported one).
    """
    sizes = {
        "parameters": int(model.count_params()),
        "gflops": round(latency.count_gflops(model, protocol.image_size), 3),
    }
    timings = {}
    for name, (predictor, mib) in formats.items():
        call = prediction.forward_function(predictor)
        timed = latency.measure_predictor(call, protocol, {**sizes, "file_mib": mib}, name)
        timings[name] = dataclasses.asdict(timed)
    return timings


def held_out_table(config: dict) -> pd.DataFrame:
    """The training's test images (``config.json``'s split), labelled."""
    table = airbus.read_dataset(config["data_dir"])
    return splits.select_split(table, splits.load_split(config["split_file"], table), "test")


def evaluate_formats(formats: dict, table: pd.DataFrame, model_path: Path) -> dict[str, dict]:
    """Each format's test F2 and gain over "no ship", and its paired difference from Keras's.

    Args:
        formats: ``predictors``'s result; its ``keras`` entry is the reference.
        table: The test images (``held_out_table``).
        model_path: The ``.keras`` model, whose ``config.json`` holds the input settings and
            the tuned post-processing (``detection.load_settings``).

    Returns:
        Per format: ``f2``, ``gain`` with ``gain_interval``, and ``vs_keras`` with
        ``vs_keras_interval`` (95 % bootstrap over images, paired), ``images``.
    """
    input_config, postprocess = detection.load_settings(model_path)
    boards = {
        name: prediction.scoreboard_for(predictor, table, input_config, postprocess, 2)
        for name, (predictor, _) in formats.items()
    }
    reference = np.asarray(boards["keras"].f2_scores)
    scores = {}
    for name, board in boards.items():
        f2, baseline = np.asarray(board.f2_scores), np.asarray(board.baseline_f2_scores)
        gain = metrics.bootstrap_intervals(f2, baseline)["gain"]
        versus = metrics.bootstrap_intervals(f2, reference)["gain"]
        scores[name] = {
            "f2": round(float(f2.mean()), 4),
            "gain": round(float((f2 - baseline).mean()), 4),
            "gain_interval": [round(v, 4) for v in gain],
            "vs_keras": round(float((f2 - reference).mean()), 4),
            "vs_keras_interval": [round(v, 4) for v in versus],
            "images": len(f2),
        }
    return scores


def comparison_lines(timings: dict, scores: dict | None) -> list[str]:
    """The formats side by side, as ``export.py`` prints them (a Markdown table)."""
    lines = [
        "| format | ms an image (median, p95) | images/s | MiB | test F2 | gain over no ship "
        "| F2 against Keras |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, timed in timings.items():
        cells = [name, f"{timed['median_ms']:.1f}, {timed['p95_ms']:.1f}"]
        cells += [f"{timed['images_per_s']:.2f}", f"{timed['file_mib']:.2f}"]
        score = (scores or {}).get(name)
        if score:
            low, high = score["gain_interval"]
            cells += [f"{score['f2']:.3f}", f"{score['gain']:+.3f} [{low:+.3f}, {high:+.3f}]"]
            low, high = score["vs_keras_interval"]
            cells.append(f"{score['vs_keras']:+.4f} [{low:+.4f}, {high:+.4f}]")
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def run_export(settings: ExportSettings) -> dict:
    """Loads the model, exports it, prints how close the exports are, times and scores them."""
    model_path = loading.find_model(Path(settings.results_dir), settings.model)
    if model_path.suffix != ".keras":
        raise errors.UserError(f"{model_path}: export takes the .keras model that train.py wrote")
    config_path = model_path.parent / "config.json"
    config = atomic.read_json(config_path) if config_path.is_file() else {}
    if settings.evaluate and not config.get("split_file"):
        raise errors.UserError(f"{config_path}: --evaluate needs the split train.py recorded")
    model = loading.load_model(model_path)
    size = settings.image_size
    images = parity_images(settings.parity_images, config, size)
    out_dir = Path(settings.out) if settings.out else loading.project_folder(model_path) / "export"
    print(f"Exporting {model_path} at {size} x {size} to {out_dir} ...")
    record = exporting.export_model(
        model, model_path, out_dir, size, config, images, quantized=settings.quantized
    )
    differences = record["parity_max_abs_difference"]
    print(
        f"Wrote {out_dir / exporting.SAVED_MODEL}, {out_dir / exporting.TFLITE} and "
        f"{out_dir / exporting.EXPORT_JSON}; largest difference from the .keras model on "
        f"{len(images)} images: SavedModel {differences['saved_model']:.1e}, "
        f"TFLite {differences['tflite']:.1e}"
    )
    return measure_export(model, model_path, out_dir, config, settings)


def measure_export(
    model, model_path: Path, out_dir: Path, config: dict, settings: ExportSettings
) -> dict:
    """Times (and with ``--evaluate`` scores) every format; adds them to ``export.json``.

    Args:
        model: The Keras model exported.
        model_path: Its ``.keras`` file.
        out_dir: The export folder.
        config: The training's ``config.json`` (its split).
        settings: The export's settings (``--evaluate``, ``--latency-runs``).
    """
    formats = predictors(model, out_dir, settings.image_size)
    protocol = latency.LatencyProtocol(image_size=settings.image_size, runs=settings.latency_runs)
    print(f"Timing {', '.join(formats)} ({protocol.image_size} px, batch 1) ...")
    record = exporting.read_export_record(out_dir / exporting.TFLITE)
    record["timings"] = time_formats(model, formats, protocol)
    scores = None
    if settings.evaluate:
        table = held_out_table(config)
        print(f"Scoring each format on the {len(table)} test images ...")
        try:
            scores = record["test_scores"] = evaluate_formats(formats, table, model_path)
        except ValueError as error:  # a test image larger than the exported input
            raise errors.UserError(f"--evaluate: {error}") from None
    atomic.write_json_atomically(out_dir / exporting.EXPORT_JSON, record)
    print("\n".join(comparison_lines(record["timings"], scores)))
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
        image = inputs.decode_image(path).numpy()[:size, :size]
        batch[index, : image.shape[0], : image.shape[1]] = image
    return batch
