"""How fast a model predicts as it is deployed: milliseconds an image, images a second, size.

The protocol is the usual one for on-device timing (TFLite's benchmark tool, Vertex AI's NAS):
a 768 x 768 image at batch 1, warm-up calls first, then the median and 95th percentile of the
timed calls; beside them the throughput at the serving batch, the parameters, the floating-point
operations and the model file's size. Each call includes turning the output into numpy arrays,
so on a GPU the time is the result's, not the launch's.

The recipe's network takes 0.3-0.5 s an image on a 2-core CPU, so the timed calls stop after
``max_seconds`` once ``min_runs`` are in: a search times every trial and cannot spend a minute on
each. ``runs`` in the record says how many calls the figures rest on.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shipseg.model import exporting
from shipseg.predict import prediction

# What a model can be timed as: the Keras model's compiled forward pass, or its TFLite file
# run by TFLite's interpreter (XNNPACK on a CPU).
FORMATS = ("keras", "tflite")


@dataclasses.dataclass(frozen=True)
class LatencyProtocol:
    """How a model is timed.

    Attributes:
        format: ``keras`` or ``tflite`` (``FORMATS``).
        image_size: Height and width of the timed image.
        warmup: Untimed calls first (tracing, memory, caches).
        runs: Timed calls at batch 1, at most.
        min_runs: Timed calls at batch 1, at least (up to ``runs``), whatever ``max_seconds``
            says.
        max_seconds: After ``min_runs``, no more timed calls start past this many seconds.
        serving_batch: The batch whose throughput is measured too (the service's and
            ``inference.py``'s batch on this device).
    """

    format: str = "keras"
    image_size: int = exporting.DEFAULT_IMAGE_SIZE
    warmup: int = 3
    runs: int = 100
    min_runs: int = 10
    max_seconds: float = 3.0
    serving_batch: int = prediction.CPU_BATCH

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"latency format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.runs < 1 or self.min_runs < 1:
            raise ValueError("the protocol needs at least one timed call")


@dataclasses.dataclass(frozen=True)
class Latency:
    """One model's timing under a ``LatencyProtocol`` (``latency_*`` columns of ``trials.csv``)."""

    format: str
    image_size: int
    median_ms: float
    p95_ms: float
    runs: int
    images_per_s: float
    serving_batch: int
    parameters: int
    gflops: float
    file_mib: float

    def columns(self) -> dict:
        """The record as ``trials.csv`` columns, each prefixed ``latency_`` but the sizes."""
        record = dataclasses.asdict(self)
        sizes = {name: record.pop(name) for name in ("parameters", "gflops", "file_mib")}
        return {**{f"latency_{name}": value for name, value in record.items()}, **sizes}


def time_calls(
    call: Callable[[], object], warmup: int, runs: int, min_runs: int, max_seconds: float
) -> np.ndarray:
    """Seconds of each timed call of ``call``, after ``warmup`` untimed ones.

    Args:
        call: What is timed; it must finish its work before returning.
        warmup: Untimed calls first.
        runs: Timed calls at most.
        min_runs: Timed calls at least (``runs`` if that is fewer).
        max_seconds: No timed call starts after this many seconds once ``min_runs`` are done.

    Returns:
        The ``min_runs`` to ``runs`` durations, in seconds, in call order.
    """
    for _ in range(warmup):
        call()
    times: list[float] = []
    min_runs = min(min_runs, runs)
    started = time.perf_counter()
    while len(times) < runs and (
        len(times) < min_runs or time.perf_counter() - started < max_seconds
    ):
        before = time.perf_counter()
        call()
        times.append(time.perf_counter() - before)
    return np.asarray(times)


def count_gflops(model, image_size: int) -> float:
    """Billions of floating-point operations of one forward pass at batch 1 (TF's profiler).

    Counts multiplications and additions apart, as the profiler does: a 3x3 convolution from
    ``c`` to ``k`` channels costs ``2 * 9 * c * k`` operations a pixel.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((1, image_size, image_size, 3), tf.float32)
    graph = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # the profiler warns of its own TF1 internals on every call
    try:
        info = tf.compat.v1.profiler.profile(graph=graph.graph, options=options)
    finally:
        logger.setLevel(level)
    return info.total_float_ops / 1e9


def _materialised(output) -> None:
    """Waits for a prediction by copying it to numpy (on a GPU the call only launches it)."""
    for value in output.values() if isinstance(output, dict) else (output,):
        np.asarray(value)


def _deployed(model, protocol: LatencyProtocol, folder: Path) -> tuple[Callable, float]:
    """The model's predict call in the protocol's format, and its file's size in MiB."""
    if protocol.format == "tflite":
        path = exporting.write_tflite(model, folder / exporting.TFLITE, protocol.image_size)
        return exporting.TFLiteModel(path).predict_on_batch, path.stat().st_size / 2**20
    return prediction.forward_function(model), weights_mib(model)


def weights_mib(model) -> float:
    """The size of a Keras model's weights file in MiB (without any optimizer state)."""
    with tempfile.TemporaryDirectory(prefix="weights-") as folder:
        path = Path(folder) / "model.weights.h5"
        model.save_weights(path)
        return round(path.stat().st_size / 2**20, 3)


def measure_latency(model, protocol: LatencyProtocol = LatencyProtocol()) -> Latency:
    """Times a Keras ``model`` as it would be deployed in ``protocol.format``."""
    with tempfile.TemporaryDirectory(prefix="latency-") as folder:
        predict, file_mib = _deployed(model, protocol, Path(folder))
        sizes = {
            "parameters": int(model.count_params()),
            "gflops": round(count_gflops(model, protocol.image_size), 3),
            "file_mib": round(file_mib, 3),
        }
        return measure_predictor(predict, protocol, sizes)


def measure_predictor(
    predict: Callable, protocol: LatencyProtocol, sizes: dict, name: str | None = None
) -> Latency:
    """Times any predict call (a SavedModel's, a TFLite file's) under ``protocol``.

    Args:
        predict: Takes ``(n, size, size, 3)`` float32 images in 0-255, returns the outputs.
        protocol: How it is timed.
        sizes: ``parameters``, ``gflops`` (``count_gflops``) and ``file_mib`` (the deployed
            file's size, or a folder's: all its files), recorded as they are.
        name: The format recorded (default: ``protocol.format``), e.g. ``saved_model``.
    """
    rng = np.random.default_rng(0)
    side = protocol.image_size
    one = rng.uniform(0, 255, (1, side, side, 3)).astype(np.float32)
    batch = np.repeat(one, protocol.serving_batch, axis=0)
    single = time_calls(
        lambda: _materialised(predict(one)),
        protocol.warmup,
        protocol.runs,
        protocol.min_runs,
        protocol.max_seconds,
    )
    batched = time_calls(lambda: _materialised(predict(batch)), 1, 20, 3, protocol.max_seconds / 2)
    return Latency(
        format=name or protocol.format,
        image_size=side,
        median_ms=round(float(np.median(single)) * 1000, 3),
        p95_ms=round(float(np.percentile(single, 95)) * 1000, 3),
        runs=len(single),
        images_per_s=round(protocol.serving_batch / float(np.median(batched)), 3),
        serving_batch=protocol.serving_batch,
        **sizes,
    )


def budget_ms(text: str | None) -> float | None:
    """A latency budget as written (``--max-latency``) in milliseconds, or None without one."""
    return None if text is None else parse_milliseconds(text)


def parse_milliseconds(text: str) -> float:
    """Milliseconds in ``100ms``, ``0.1s`` or a bare number of milliseconds (``250``).

    Raises:
        ValueError: For anything else, or a value that is not above zero.
    """
    cleaned = text.strip().lower()
    scale = 1000.0 if cleaned.endswith("s") and not cleaned.endswith("ms") else 1.0
    number = cleaned.removesuffix("ms").removesuffix("s")
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"latency {text!r} is not a duration (use e.g. 100ms or 0.25s)") from None
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"latency {text!r} must be above zero (e.g. 100ms)")
    return value
