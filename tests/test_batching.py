"""Micro-batching: concurrent images share forward passes, one shape per pass, errors reach
their callers, and a full queue refuses at once.

No test sleeps: a ``GatedModel`` tells when the network thread has taken a batch
(``started``) and holds it until the test lets it go (``release``), so the queue's contents at
each step are known, however slow the machine.
"""

import threading

import numpy as np
import pytest

from shipseg.serve.batching import Batcher, QueueFullError

WAIT = 30  # seconds: a bound for events that come at once unless something is broken


class GatedModel:
    """Returns each image's mean and records the batches it was called with.

    Each call sets ``started`` and then waits for ``release`` (set from the start unless
    ``gated``): the test decides when the network thread may go on.
    """

    def __init__(self, gated: bool = False):
        self.calls: list[list[tuple]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def __call__(self, images):
        self.calls.append([image.shape for image in images])
        self.started.set()
        assert self.release.wait(WAIT), "the test never released the network thread"
        return [float(image.mean()) for image in images]

    def shapes(self) -> list[tuple]:
        return [shape for call in self.calls for shape in call]


def busy_batcher(model: GatedModel, **settings) -> tuple[Batcher, object]:
    """A batcher whose network thread holds a first image (until ``model.release``)."""
    batcher = Batcher(model, **settings)
    first = batcher.submit(np.zeros((2, 2, 3)))
    assert model.started.wait(WAIT), "the network thread did not take the first image"
    return batcher, first


def test_images_waiting_together_share_one_call_and_each_gets_its_own_result():
    model = GatedModel(gated=True)
    batcher, first = busy_batcher(model, max_batch=8, max_wait=0.0, max_queue=64)
    futures = [batcher.submit(np.full((4, 4, 3), value, np.float32)) for value in range(6)]
    model.release.set()
    assert [future.result(timeout=WAIT) for future in futures] == [0, 1, 2, 3, 4, 5]
    assert first.result(timeout=WAIT) == 0.0
    assert model.calls[1:] == [[(4, 4, 3)] * 6]
    batcher.close()


def test_a_batch_waits_up_to_max_wait_for_images_to_join_the_first():
    model = GatedModel()
    batcher = Batcher(model, max_batch=8, max_wait=WAIT, max_queue=64)
    # The first image's batch stays open for WAIT seconds; the others join it at once.
    futures = [batcher.submit(np.full((4, 4, 3), value, np.float32)) for value in range(8)]
    assert [future.result(timeout=WAIT) for future in futures] == list(range(8))
    assert len(model.calls) == 1  # eight images: the batch was full before max_wait
    batcher.close()


def test_a_batch_holds_at_most_max_batch_images_and_one_shape():
    model = GatedModel(gated=True)
    batcher, first = busy_batcher(model, max_batch=3, max_wait=0.0, max_queue=64)
    shapes = [(4, 4, 3)] * 4 + [(8, 8, 3)] * 2
    futures = [batcher.submit(np.zeros(shape)) for shape in shapes]
    model.release.set()
    for future in [first, *futures]:
        future.result(timeout=WAIT)
    batcher.close()
    assert all(len(call) <= 3 and len(set(call)) == 1 for call in model.calls)
    assert sorted(model.shapes()) == sorted([(2, 2, 3), *shapes])


def test_an_error_in_the_network_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    class FailingOnce(GatedModel):
        def __call__(self, images):
            results = super().__call__(images)
            if len(self.calls) == 2:  # the batch after the first image's
                raise RuntimeError("out of memory")
            return results

    model = FailingOnce(gated=True)
    batcher, first = busy_batcher(model, max_batch=4, max_wait=0.0, max_queue=8)
    failing = [batcher.submit(np.zeros((2, 2, 3))) for _ in range(2)]
    model.release.set()
    assert first.result(timeout=WAIT) == 0.0
    for future in failing:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=WAIT)
    assert batcher.submit(np.zeros((2, 2, 3))).result(timeout=WAIT) == 0.0
    assert [len(call) for call in model.calls] == [1, 2, 1]
    batcher.close()


def test_a_full_queue_refuses_at_once():
    model = GatedModel(gated=True)
    batcher, running = busy_batcher(model, max_batch=1, max_wait=0.0, max_queue=2)
    waiting = [batcher.submit(np.zeros((2, 2, 3))) for _ in range(2)]
    with pytest.raises(QueueFullError):
        batcher.submit(np.zeros((2, 2, 3)))
    model.release.set()
    assert [f.result(timeout=WAIT) for f in [running, *waiting]] == [0.0] * 3
    batcher.close()


def test_a_request_that_gives_up_is_dropped_and_the_network_thread_serves_on():
    model = GatedModel(gated=True)
    batcher, busy = busy_batcher(model, max_batch=2, max_wait=0.0, max_queue=8)
    abandoned = batcher.submit(np.zeros((3, 3, 3)))
    assert abandoned.cancel()
    model.release.set()
    assert busy.result(timeout=WAIT) == 0.0
    assert batcher.submit(np.ones((2, 2, 3))).result(timeout=WAIT) == 1.0
    assert batcher.alive and (3, 3, 3) not in model.shapes()
    batcher.close()


def test_a_scene_refused_for_a_full_queue_leaves_none_of_its_tiles_to_predict():
    model = GatedModel(gated=True)
    batcher, running = busy_batcher(model, max_batch=1, max_wait=0.0, max_queue=2)
    tiles = [np.full((5, 5, 3), value, np.float32) for value in range(3)]  # two places left
    with pytest.raises(QueueFullError):
        batcher.predict_all(tiles)
    model.release.set()
    assert running.result(timeout=WAIT) == 0.0
    assert batcher.submit(np.ones((2, 2, 3))).result(timeout=WAIT) == 1.0
    assert (5, 5, 3) not in model.shapes()
    batcher.close()
