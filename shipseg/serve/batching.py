"""Micro-batching: images from concurrent requests predicted together, by one network thread.

A U-Net on a CPU or a GPU does more images a second in batches than one at a time, and one
model must not run in several threads at once (each would split the cores among them). So
requests put their decoded images in a bounded queue and wait; one thread takes up to
``max_batch`` images, waiting at most ``max_wait`` seconds for a batch to fill, and answers
each request's future. A full queue refuses at once (``QueueFullError``) instead of letting memory
grow with the number of clients.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

# One batch: the images in, one result per image out (in the same order).
PredictFunction = Callable[[Sequence[np.ndarray]], Sequence[object]]


class QueueFullError(Exception):
    """The batcher holds as many images as it may: the caller should come back later."""


class Batcher:
    """Predicts submitted images in batches on one thread (see the module docstring).

    Args:
        predict: Predicts a list of images of one shape; returns one result per image.
        max_batch: Most images in one call of ``predict``.
        max_wait: Seconds the first image of a batch waits for others to join it.
        max_queue: Most images waiting; ``submit`` raises ``QueueFullError`` beyond.
    """

    def __init__(self, predict: PredictFunction, max_batch: int, max_wait: float, max_queue: int):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._serve, name="network", daemon=True)
        self._thread.start()
        self.batches = 0  # Calls of ``predict`` so far (for tests and the benchmark).

    def submit(self, image: np.ndarray) -> concurrent.futures.Future:
        """Queues one image; its future gives ``predict``'s result for it.

        Raises:
            QueueFullError: When ``max_queue`` images already wait.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait((image, future))
        except queue.Full:
            raise QueueFullError from None
        return future

    def predict_all(self, images: Sequence[np.ndarray]) -> list:
        """Submits several images (a scene's tiles) and waits for all, blocking this thread.

        Raises:
            QueueFullError: When the queue fills before the last image is in; the images
                already queued are cancelled (the network skips them), not predicted for a
                request that has been refused.
        """
        futures: list[concurrent.futures.Future] = []
        try:
            for image in images:
                futures.append(self.submit(image))
        except QueueFullError:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]

    def close(self) -> None:
        """Stops the network thread once the images already queued are done."""
        self._queue.put((None, None))
        self._thread.join()

    def _next_batch(self) -> list | None:
        """Blocks for one image, then gathers more until ``max_batch`` or ``max_wait``."""
        first = self._queue.get()
        if first[0] is None:
            return None
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item[0] is None:  # Closing: finish this batch, then stop.
                self._queue.put(item)
                break
            batch.append(item)
        return batch

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A request that gave up (its future cancelled) is dropped before the network runs.
            live = [item for item in batch if item[1].set_running_or_notify_cancel()]
            by_shape = sorted(live, key=lambda item: item[0].shape)
            for _, group in itertools.groupby(by_shape, key=lambda item: item[0].shape):
                self._run(list(group))

    def _run(self, group: list) -> None:
        """One call of ``predict`` for images of one shape; errors go to their requests.

        Nothing raised here may end the thread: every request of the batch gets its result or
        the error, and the next batch runs.
        """
        try:
            results = list(self.predict([image for image, _ in group]))
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} results for {len(group)} images")
        except Exception as error:  # The requests report it; the thread serves on.
            for _, future in group:
                future.set_exception(error)
            return
        self.batches += 1
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    @property
    def alive(self) -> bool:
        """Whether the network thread is serving."""
        return self._thread.is_alive()
