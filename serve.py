"""Serve a trained model over HTTP, with a web page: ``python serve.py``.

Endpoints (``shipseg.serve.api``): ``GET /`` a page to drop an image on, ``POST /predict`` one image
in and its ships out (JSON, or GeoJSON with ``Accept: application/geo+json``; ``?overlay=1``
adds the overlay PNG), ``GET /model``, ``GET /health`` and the OpenAPI pages at ``/docs``.
The model defaults to the latest ``results/*/final/model.keras``; ``--model`` also takes
``export.py``'s ``.tflite`` file. Ships are found exactly as ``inference.py`` finds them.

Example:
    python serve.py &
    curl -s -H "Content-Type: image/jpeg" --data-binary @image.jpg localhost:8000/predict
"""

from __future__ import annotations

import argparse
import sys

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg import cli
from shipseg.serve.service import ServeSettings

MEGABYTE = 2**20
# Seconds an idle kept-alive connection stays open (it counts among the connections).
KEEP_ALIVE_S = 5


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``serve.py``."""
    parser = argparse.ArgumentParser(
        description="Serve a trained ship U-Net over HTTP: a JSON / GeoJSON API and a web page.",
        formatter_class=cli.HelpFormatter,
    )
    defaults = cli.defaults_of(ServeSettings)
    parser.add_argument(
        "--model",
        help="a .keras model or export.py's .tflite file "
        "(default: the latest results/*/final/model.keras)",
    )
    parser.add_argument("--results-dir", default=defaults.results_dir)
    parser.add_argument(
        "--host", default=defaults.host, help="address to listen on (0.0.0.0: every interface)"
    )
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument(
        "--pixel-size", type=float, default=defaults.pixel_size, help="metres per pixel"
    )
    batching = parser.add_argument_group("batching and limits")
    batching.add_argument(
        "--max-batch",
        type=int,
        help="most images in one prediction (default: 8 on a CPU, what fits a GPU's memory)",
    )
    batching.add_argument(
        "--batch-wait",
        type=float,
        default=defaults.batch_wait_ms,
        help="ms the first image of a batch waits for others",
    )
    batching.add_argument(
        "--max-pending",
        type=int,
        default=defaults.max_pending,
        help="requests served at once (and 2x + 8 connections); more get 503 with Retry-After",
    )
    batching.add_argument(
        "--max-upload",
        type=float,
        default=defaults.max_upload / MEGABYTE,
        help="largest request body, in MiB",
    )
    batching.add_argument(
        "--max-pixels", type=int, default=defaults.max_pixels, help="largest image, in pixels"
    )
    batching.add_argument(
        "--read-timeout",
        type=float,
        default=defaults.read_timeout,
        help="seconds a request's headers, and then its body, may take to arrive (408 beyond)",
    )
    cli.add_postprocess_options(parser.add_argument_group("post-processing"))
    cli.add_scene_options(parser.add_argument_group("large scenes (as inference.py tiles them)"))
    return parser


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """The service's settings, checked (one-line errors name the option)."""
    return ServeSettings(
        model=args.model,
        results_dir=args.results_dir,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait,
        max_pending=args.max_pending,
        max_upload=int(args.max_upload * MEGABYTE),
        max_pixels=args.max_pixels,
        read_timeout=args.read_timeout,
        pixel_size=args.pixel_size,
        tile=args.tile,
        tile_above=args.tile_above,
        overlap=args.overlap,
        overrides=tuple(cli.postprocess_overrides(args).items()),
    )


def serve(settings: ServeSettings) -> None:
    """Loads the model and serves it until interrupted."""
    import uvicorn

    from shipseg.serve import api, connections
    from shipseg.serve.service import Detector

    detector = Detector(settings)
    print(f"Serving {detector.model_path} on http://{settings.host}:{settings.port}/", flush=True)
    uvicorn.run(
        api.create_app(detector),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
        # A deadline on each request's headers and a bound on connections (memory stays bounded).
        http=connections.protocol(
            settings.read_timeout, settings.max_connections, drain_limit=4 * settings.max_upload
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return cli.main("serve.py", build_parser(), lambda args: serve(settings_from(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
