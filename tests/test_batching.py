"""Micro-batching: concurrent images share forward passes, one shape per pass, errors reach
their callers, and a full queue refuses at once."""

import threading
import time

import numpy as np
import pytest

from shipseg.serve.batching import Batcher, QueueFullError


class RecordingModel:
    """Returns each image's mean and records the batches it was called with."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[tuple]] = []
        self.delay = delay

    def __call__(self, images):
        self.calls.append([image.shape for image in images])
        time.sleep(self.delay)
        return [float(image.mean()) for image in images]


def test_images_submitted_together_share_one_call_and_each_gets_its_own_result():
    model = RecordingModel()
    batcher = Batcher(model, max_batch=8, max_wait=0.5, max_queue=64)
    futures = [batcher.submit(np.full((4, 4, 3), value, np.float32)) for value in range(6)]
    assert [future.result(timeout=10) for future in futures] == [0, 1, 2, 3, 4, 5]
    assert len(model.calls) == 1 and len(model.calls[0]) == 6
    batcher.close()


def test_a_batch_holds_at_most_max_batch_images_and_one_shape():
    model = RecordingModel(delay=0.2)
    batcher = Batcher(model, max_batch=3, max_wait=0.3, max_queue=64)
    blocker = batcher.submit(np.zeros((2, 2, 3)))  # keeps the thread busy while we queue
    time.sleep(0.05)
    shapes = [(4, 4, 3)] * 4 + [(8, 8, 3)] * 2
    futures = [batcher.submit(np.zeros(shape)) for shape in shapes]
    for future in [blocker, *futures]:
        future.result(timeout=10)
    batcher.close()
    assert all(len(call) <= 3 and len(set(call)) == 1 for call in model.calls)
    assert sorted(shape for call in model.calls for shape in call) == sorted([(2, 2, 3), *shapes])


def test_an_error_in_the_network_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    calls = []

    def failing_once(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return [0.0] * len(images)

    batcher = Batcher(failing_once, max_batch=4, max_wait=0.2, max_queue=8)
    first = [batcher.submit(np.zeros((2, 2, 3))) for _ in range(2)]
    for future in first:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=10)
    assert batcher.submit(np.zeros((2, 2, 3))).result(timeout=10) == 0.0
    batcher.close()


def test_a_full_queue_refuses_at_once():
    release = threading.Event()

    def slow(images):
        release.wait(10)
        return [0.0] * len(images)

    batcher = Batcher(slow, max_batch=1, max_wait=0.0, max_queue=2)
    running = batcher.submit(np.zeros((2, 2, 3)))
    time.sleep(0.1)  # taken by the network thread
    waiting = [batcher.submit(np.zeros((2, 2, 3))) for _ in range(2)]
    with pytest.raises(QueueFullError):
        batcher.submit(np.zeros((2, 2, 3)))
    release.set()
    assert [f.result(timeout=10) for f in [running, *waiting]] == [0.0] * 3
    batcher.close()


def test_a_request_that_gives_up_is_dropped_and_the_network_thread_serves_on():
    model = RecordingModel(delay=0.3)
    batcher = Batcher(model, max_batch=2, max_wait=0.0, max_queue=8)
    busy = batcher.submit(np.zeros((2, 2, 3)))
    time.sleep(0.05)
    abandoned = batcher.submit(np.zeros((3, 3, 3)))
    assert abandoned.cancel()
    assert busy.result(timeout=10) == 0.0
    assert batcher.submit(np.ones((2, 2, 3))).result(timeout=10) == 1.0
    assert batcher.alive and (3, 3, 3) not in [shape for call in model.calls for shape in call]
    batcher.close()


def test_a_scene_refused_for_a_full_queue_leaves_none_of_its_tiles_to_predict():
    release = threading.Event()
    model = RecordingModel()

    def slow(images):
        release.wait(10)
        return model(images)

    batcher = Batcher(slow, max_batch=1, max_wait=0.0, max_queue=2)
    running = batcher.submit(np.zeros((2, 2, 3)))
    time.sleep(0.1)  # taken by the network thread; two places left in the queue
    tiles = [np.full((5, 5, 3), value, np.float32) for value in range(3)]
    with pytest.raises(QueueFullError):
        batcher.predict_all(tiles)
    release.set()
    assert running.result(timeout=10) == 0.0
    assert batcher.submit(np.ones((2, 2, 3))).result(timeout=10) == 1.0
    assert (5, 5, 3) not in [shape for call in model.calls for shape in call]
    batcher.close()
