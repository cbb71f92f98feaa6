"""The HTTP service: a trained model behind FastAPI, for programs (JSON, GeoJSON) and people.

``serve.py`` builds a ``Detector`` (the model, its tuned post-processing, one network thread
fed in batches) and ``create_app`` puts it behind these endpoints:

    GET  /health    ready, with the requests in progress
    GET  /model     what is served: the file, its input and tuned post-processing, the limits
    POST /predict   one image -> its size, ship probability and ships (``PredictAnswer`` in
                    JSON; the ships alone as GeoJSON or CSV with ``Accept:
                    application/geo+json`` or ``text/csv``; ``?overlay=1`` adds the overlay)
    POST /ships     ship records (``/predict``'s) back as CSV or GeoJSON: the page's downloads
    GET  /          a page to drop an image on and see its ships
    GET  /docs      the OpenAPI documentation FastAPI writes

(``HEAD`` works wherever ``GET`` does.) Each image takes ``inference.py``'s path: the same
decoder, the same whole-image prediction (or the same tiles for a scene) and
``detection.describe`` for the ships, so the service answers with the ship records
(``ships.ShipRecord``) that ``inference.py`` writes to ``ships.csv`` for the same file. The
event loop only reads requests and writes answers; decoding and post-processing run in worker
threads and the network in its own (``shipseg.serve.batching``), so a slow image holds up no
other request.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipseg.core import errors
from shipseg.core.errors import RequestError
from shipseg.data import airbus, inputs
from shipseg.model import loading
from shipseg.predict import detection, prediction, records, tiling
from shipseg.scoring import ships
from shipseg.scoring.ships import ShipRecord
from shipseg.serve import batching, uploads

# Most images in one forward pass on a CPU: concurrent requests share passes up to this.
CPU_MAX_BATCH = 8


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Everything ``serve.py`` is told (see ``python serve.py --help`` for each).

    Memory stays bounded: at most ``max_pending`` requests are admitted at once and
    ``max_connections`` connections held (beyond either: 503 and ``Retry-After``), each
    holding at most ``max_upload`` bytes and ``max_pixels`` decoded pixels (3 bytes each), and
    one scene is tiled at a time. ``max_batch`` None sizes batches to the device: 8 on a CPU,
    on a GPU what fits its memory (``prediction.device_batch_size``).
    """

    model: str | None = None
    results_dir: str = "results"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int | None = None
    batch_wait_ms: float = 10.0
    max_pending: int = 32
    max_upload: int = 32 * 2**20
    max_pixels: int = 40_000_000
    read_timeout: float = 30.0
    pixel_size: float = ships.DEFAULT_PIXEL_SIZE
    tile: int = tiling.DEFAULT_TILE
    tile_above: int = tiling.DEFAULT_LIMIT
    overlap: int = tiling.DEFAULT_OVERLAP
    # Post-processing flags over the model's tuned values, as ``(name, value)`` pairs.
    overrides: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        """Raises ``errors.UserError`` (naming the option) for a setting out of its range."""
        for name in ("max_batch", "max_pending", "max_upload", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise errors.UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_pixels > airbus.MAX_SCENE_PIXELS:
            raise errors.UserError(
                f"--max-pixels must be at most {airbus.MAX_SCENE_PIXELS} (the decoders' limit)"
            )
        if not self.batch_wait_ms >= 0:
            raise errors.UserError("--batch-wait must be at least 0")
        for name in ("read_timeout", "pixel_size"):
            if not getattr(self, name) > 0:
                raise errors.UserError(f"--{name.replace('_', '-')} must be above 0")
        tiling.check_scene_options(self.tile, self.tile_above, self.overlap)

    @property
    def max_connections(self) -> int:
        """Connections held at once: each admitted request, as many waiting, and a few more."""
        return 2 * self.max_pending + 8


class Detector:
    """A trained model ready for requests: an image's bytes in, its ships out.

    Args:
        settings: The service's settings (the model, batching, tiling, pixel size).
        model: The network, already loaded (a stand-in, in tests: anything with Keras's
            ``predict_on_batch``); by default the model file's. Its input handling and
            post-processing come from the model file's settings either way.
    """

    def __init__(self, settings: ServeSettings, model: object | None = None):
        self.settings = settings
        self.model_path = loading.find_model(Path(settings.results_dir), settings.model)
        self.input_config, self.postprocess = detection.load_settings(
            self.model_path, dict(settings.overrides)
        )
        self.model = loading.load_model(self.model_path) if model is None else model
        self.max_batch = settings.max_batch or prediction.device_batch_size(
            self.model, cpu_batch=CPU_MAX_BATCH
        )
        self.batcher = batching.Batcher(
            self._predict,
            self.max_batch,
            settings.batch_wait_ms / 1000,
            settings.max_pending * self.max_batch,
        )
        self._scene_turn = asyncio.Lock()  # One scene at a time: its maps are the largest thing.
        probe = np.zeros((1, 32, 32, 3), np.float32)
        self.has_ship_head = prediction.predict_batch(self.model, probe)[1] is not None

    def _predict(self, images: list[np.ndarray]) -> list[prediction.Prediction]:
        """The network thread's call: one batch, as ``inference.py`` predicts whole images."""
        flip_tta = self.postprocess.flip_tta
        return prediction.predict_images(self.model, images, self.input_config, flip_tta)

    def decode(self, data: bytes) -> np.ndarray:
        """The checked upload as ``(h, w, 3)`` uint8 RGB, decoded as ``inference.py`` decodes it.

        Whole images go through TensorFlow's decoder (``inputs``), scenes through Pillow's
        (``tiling.read_scene``), each as ``inference.py`` reads them.
        """
        from PIL import Image

        size = uploads.check_image(data, self.settings.max_pixels)
        try:
            if self.is_scene(size):
                return tiling.read_scene(io.BytesIO(data))
            return inputs.decode_rgb(data).numpy()
        except Image.DecompressionBombError:  # Pillow's own limit: the image's size, not its bytes
            width, height = size[::-1]
            raise RequestError(
                413, f"the image is {width} x {height} pixels, over the decoder's limit"
            ) from None
        except Exception as error:  # The decoders raise InvalidArgumentError, OSError and more.
            message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise RequestError(400, f"the image does not decode ({message})") from None

    def is_scene(self, size: tuple[int, int]) -> bool:
        """Whether ``inference.py`` would tile an image of this size (``tiling.scene_positions``)."""
        limit = self.settings.tile_above
        return bool(tiling.scene_positions([size], self.input_config, limit))

    async def predict(self, image: np.ndarray) -> prediction.Prediction:
        """The image's prediction: in the next batch, or tile by tile for a scene.

        Scenes wait their turn here, on the event loop, rather than in a worker thread, so a
        queue of scenes never takes the threads that decode and post-process other requests.
        """
        if self.is_scene(image.shape[:2]):
            async with self._scene_turn:
                return await asyncio.to_thread(self._predict_scene, image)
        try:
            future = self.batcher.submit(image)
        except batching.QueueFullError:
            raise errors.ServiceBusyError() from None
        return await asyncio.wrap_future(future)

    def _predict_scene(self, scene: np.ndarray) -> prediction.Prediction:
        probabilities, ship = tiling.predict_scene(
            self._predict_tiles,
            scene,
            self.settings.tile,
            self.settings.overlap,
            self.max_batch,
            gate=self.postprocess.ship_threshold,
        )
        return prediction.Prediction(0, probabilities, ship)

    def _predict_tiles(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``tiling.predict_scene``'s ``predict``, through the batcher (tiles share batches)."""
        try:
            done = self.batcher.predict_all(list(tiles))
        except batching.QueueFullError:
            raise errors.ServiceBusyError() from None
        probabilities = np.stack([tile.probabilities for tile in done])
        head = [tile.ship_probability for tile in done]
        return probabilities, None if head[0] is None else np.asarray(head, np.float32)

    def answer(
        self,
        name: str,
        image: np.ndarray,
        found: prediction.Prediction,
        overlay: bool,
        start: float,
    ) -> PredictAnswer:
        """One image's answer (post-processing included: run it off the event loop).

        Args:
            name: The image's label (each ship's ``ImageId``).
            image: The decoded ``(h, w, 3)`` image.
            found: Its prediction.
            overlay: Add the overlay PNG.
            start: When the request began (``time.perf_counter``), for ``seconds``.
        """
        labels, record = detection.describe(name, found, self.postprocess, self.settings.pixel_size)
        png = detection.overlay_png(image, labels) if overlay else None
        return PredictAnswer(
            image=name,
            height=int(image.shape[0]),
            width=int(image.shape[1]),
            ship_probability=found.ship_probability,
            top_pixel_probability=record["image_row"][2],
            ships=records.image_ships(record),
            seconds=round(time.perf_counter() - start, 4),
            overlay_png=None if png is None else base64.b64encode(png).decode("ascii"),
        )

    def describe_model(self) -> dict:
        """``GET /model``: the file, its input, its tuned post-processing and the limits.

        The file is named relative to the results folder (or by its name alone, when given
        from elsewhere): the server's own directories are not a client's business.
        """
        limits = dataclasses.asdict(self.settings)
        for name in ("model", "results_dir", "host", "port", "overrides"):
            limits.pop(name)
        limits["max_connections"] = self.settings.max_connections
        limits["max_batch"] = self.max_batch  # as sized to the device
        return {
            "model": shown_path(self.model_path, Path(self.settings.results_dir)),
            "format": "tflite" if self.model_path.suffix == ".tflite" else "keras",
            "ship_head": self.has_ship_head,
            "input": None if self.input_config is None else dataclasses.asdict(self.input_config),
            "postprocess": dataclasses.asdict(self.postprocess),
            "settings": limits,
        }


def shown_path(model_path: Path, results_dir: Path) -> str:
    """``model_path`` as a client sees it: relative to ``results_dir``, else its name alone."""
    try:
        return model_path.resolve().relative_to(results_dir.resolve()).as_posix()
    except ValueError:
        return model_path.name


class PredictAnswer(BaseModel):
    """``POST /predict``'s JSON answer: the image, its ship evidence and its ships."""

    model_config = ConfigDict(frozen=True)

    image: str = Field(
        description="The image's label: ?name=, else the upload's file name, else 'upload'."
    )
    height: int = Field(description="The image's height in pixels.")
    width: int = Field(description="The image's width in pixels.")
    ship_probability: float | None = Field(
        description="The ship head's probability that the image holds a ship (null for a "
        "model without a head)."
    )
    top_pixel_probability: float = Field(description="The image's highest pixel probability.")
    ships: list[ShipRecord] = Field(
        description="The ships found, as inference.py lists them in ships.csv."
    )
    seconds: float = Field(description="Time taken, from the request's start to the answer.")
    overlay_png: str | None = Field(
        None,
        description="With ?overlay=1: the image in grey with its ships in red, as base64 PNG.",
    )
