"""Timing a model as it is deployed (shipseg/predict/latency.py), on tiny models."""

from __future__ import annotations

import keras
import pytest

from shipseg.model import unet
from shipseg.predict import latency


def test_timing_makes_the_warm_up_calls_then_stops_at_the_most_runs():
    calls = []
    times = latency.time_calls(
        lambda: calls.append(1), warmup=3, runs=7, min_runs=2, max_seconds=60
    )
    assert len(times) == 7 and len(calls) == 10 and (times >= 0).all()


def test_timing_stops_after_the_time_limit_once_the_fewest_runs_are_in():
    calls = []
    times = latency.time_calls(
        lambda: calls.append(1), warmup=0, runs=1000, min_runs=4, max_seconds=0
    )
    assert len(times) == 4


def one_convolution(side: int = 32) -> keras.Model:
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, activation="sigmoid")(
        inputs
    )
    return keras.Model(inputs, outputs)


def test_the_operation_count_is_two_per_multiply_add_of_each_convolution():
    # 3 x 3 x 3 inputs to each of 4 outputs at every one of 32 x 32 pixels, plus the sigmoid.
    convolution = 2 * 9 * 3 * 4 * 32 * 32
    gflops = latency.count_gflops(one_convolution(), 32)
    assert convolution / 1e9 <= gflops <= (convolution + 4 * 32 * 32 * 4) / 1e9


@pytest.mark.parametrize("format_", latency.FORMATS)
def test_a_model_is_timed_in_each_format_with_its_size_and_throughput(format_):
    model = unet.build_unet(levels=2, base_filters=4)
    protocol = latency.LatencyProtocol(format=format_, image_size=32, runs=5, min_runs=5)
    timed = latency.measure_latency(model, protocol)
    assert timed.format == format_ and timed.runs == 5
    assert 0 < timed.median_ms <= timed.p95_ms
    assert timed.images_per_s > 0 and timed.serving_batch == protocol.serving_batch
    assert timed.parameters == model.count_params() and timed.gflops > 0
    assert timed.file_mib > 0
    columns = timed.columns()
    assert columns["latency_median_ms"] == timed.median_ms and columns["parameters"] > 0


def test_a_deeper_wider_model_is_measured_as_larger_and_costlier():
    small = latency.measure_latency(
        unet.build_unet(levels=2, base_filters=4), latency.LatencyProtocol(image_size=64, runs=3)
    )
    large = latency.measure_latency(
        unet.build_unet(levels=3, base_filters=16), latency.LatencyProtocol(image_size=64, runs=3)
    )
    assert large.gflops > 10 * small.gflops and large.parameters > 10 * small.parameters
    assert large.file_mib > small.file_mib


@pytest.mark.parametrize(
    ("text", "milliseconds"),
    [("100ms", 100.0), ("0.25s", 250.0), ("250", 250.0), (" 12.5MS ", 12.5)],
)
def test_a_latency_is_read_in_milliseconds_or_seconds(text, milliseconds):
    assert latency.parse_milliseconds(text) == pytest.approx(milliseconds)


@pytest.mark.parametrize("text", ["fast", "0ms", "-5ms", "nan", "ms"])
def test_a_latency_that_is_not_a_positive_duration_is_refused_with_its_text(text):
    with pytest.raises(ValueError, match="latency"):
        latency.parse_milliseconds(text)


def test_a_protocol_in_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="onnx"):
        latency.LatencyProtocol(format="onnx")
