"""The service's routes: FastAPI in front of a ``service.Detector`` (see ``shipseg.serve.service``).

Every error is JSON, ``{"error": "..."}`` with a 4xx status that says what kind of problem it
was (5xx only for the server's own failures), never a traceback; no route reads a file a
request names. Ships are always ``ships.ShipRecord``s: ``/predict`` answers with them in its
JSON, or alone as a file (CSV as ``ships.csv``, GeoJSON as ``ships.geojson``), and ``/ships``
turns records a client holds (the page's) into those files, so there is one CSV and one
GeoJSON writer (``shipseg.scoring.ships``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydantic
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from shipseg.core.errors import RequestError, ServiceBusyError
from shipseg.scoring import ships
from shipseg.scoring.ships import ShipRecord
from shipseg.serve import uploads
from shipseg.serve.service import Detector, PredictAnswer, ServeSettings

PAGE = Path(__file__).with_name("page.html")
JSON = "application/json"
GEOJSON = "application/geo+json"
CSV = "text/csv"
# What ``Accept`` may ask for: the first of these it names (JSON when it names none).
FORMATS = (JSON, GEOJSON, CSV)
SHIP_LIST = pydantic.TypeAdapter(list[ShipRecord])
SHIP_LIST_SCHEMA = {"type": "array", "items": {"$ref": "#/components/schemas/ShipRecord"}}
# /predict's body, for the OpenAPI page (the route reads the raw stream to bound it).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in uploads.RAW_TYPES
            },
            uploads.MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
SHIPS_BODY = {"requestBody": {"required": True, "content": {JSON: {"schema": SHIP_LIST_SCHEMA}}}}
# The ships alone as a file, with Accept: text/csv or application/geo+json.
SHIP_FILES = {
    200: {
        "description": "JSON; or, as Accept asks, the ships alone: CSV with ships.csv's columns "
        "(a ShipRecord's fields) or a GeoJSON FeatureCollection of their boxes (pixel "
        "coordinates, x = column, y = row; the other fields as properties)",
        "content": {CSV: {"schema": {"type": "string"}}, GEOJSON: {"schema": {"type": "object"}}},
    }
}


class Admission:
    """Counts the requests being served; refuses one more than ``limit`` (memory stays bounded)."""

    def __init__(self, limit: int):
        self.limit, self.busy = limit, 0

    def __enter__(self):
        if self.busy >= self.limit:
            raise ServiceBusyError()
        self.busy += 1  # The event loop's thread alone counts: no lock needed.

    def __exit__(self, *exc_info):
        self.busy -= 1


class HeadAsGet:
    """ASGI middleware: ``HEAD`` answered wherever ``GET`` is, as ``GET`` without its body.

    FastAPI's routes answer only the methods they declare (``HEAD /health`` would be 405).
    """

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:  # noqa: D102
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: dict) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def answer_format(accept: str | None) -> str:
    """The media type of the answer: the first of ``FORMATS`` that ``accept`` names, else JSON."""
    for part in (accept or "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in FORMATS:
            return kind
    return JSON


def create_app(detector: Detector) -> FastAPI:
    """The FastAPI application serving ``detector``."""
    app = FastAPI(
        title="Ship detection",
        summary="Ships in satellite images, found by a U-Net trained with this toolkit.",
    )
    app.add_middleware(HeadAsGet)
    admission = Admission(detector.settings.max_pending)
    _add_error_handlers(app)
    _add_status_routes(app, detector, admission)
    _add_ship_routes(app, detector, admission)
    return app


def _add_status_routes(app: FastAPI, detector: Detector, admission: Admission) -> None:
    """``GET /health``, ``GET /model`` and the page."""

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """Whether the model is loaded and answering, and how busy the service is."""
        alive = detector.batcher.alive
        body = {
            "status": "ready" if alive else "failed: the network thread stopped",
            "requests_in_progress": admission.busy,
            "batches_predicted": detector.batcher.batches,
        }
        # Counted by the service's HTTP protocol (``shipseg.serve.connections``), when it runs.
        if (connections := getattr(request.state, "connections_open", None)) is not None:
            body["connections_open"] = connections
        return JSONResponse(body, 200 if alive else 503)

    @app.get("/model")
    async def model() -> dict:
        """What is served: the model file, its input and tuned post-processing, the limits."""
        return detector.describe_model()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())


def _add_ship_routes(app: FastAPI, detector: Detector, admission: Admission) -> None:
    """``POST /predict`` (an image's ships) and ``POST /ships`` (ship records as files)."""

    @app.post(
        "/predict", response_model=PredictAnswer, responses=SHIP_FILES, openapi_extra=UPLOAD_BODY
    )
    async def predict(
        request: Request,
        overlay: bool = Query(False, description="add the overlay PNG (base64) to the answer"),
        name: str | None = Query(None, description="the image's name in the answer"),
    ) -> Response:
        """One image in (body or multipart upload), its ships out (JSON, GeoJSON or CSV)."""
        kind = answer_format(request.headers.get("accept"))
        with admission:
            answer = await _predict(detector, request, overlay, name)
        return await _answer(kind, answer.ships, answer.model_dump_json)

    @app.post(
        "/ships", response_model=list[ShipRecord], responses=SHIP_FILES, openapi_extra=SHIPS_BODY
    )
    async def ship_file(request: Request) -> Response:
        """Ship records (``/predict``'s ``ships``, as JSON) back as CSV or GeoJSON (``Accept``)."""
        kind = answer_format(request.headers.get("accept"))
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip()
        if content_type.lower() != JSON:
            raise RequestError(415, f"send the ship records as {JSON}, not {content_type}")
        with admission:
            found = await asyncio.to_thread(_ship_list, await _read(request, detector.settings))
        return await _answer(kind, found, lambda: SHIP_LIST.dump_json(found))


async def _read(request: Request, settings: ServeSettings) -> bytes:
    """The request's body, bounded in bytes and time (``uploads.read_body``)."""
    try:
        return await uploads.read_body(
            request.stream(),
            request.headers.get("content-length"),
            settings.max_upload,
            settings.read_timeout,
        )
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before sending the whole body") from None


async def _predict(detector: Detector, request: Request, overlay: bool, name: str | None):
    """Reads, decodes, predicts and describes one uploaded image."""
    start = time.perf_counter()
    body = await _read(request, detector.settings)
    content_type = request.headers.get("content-type")
    data, filename = await asyncio.to_thread(uploads.image_bytes, content_type, body)
    del body
    image = await asyncio.to_thread(detector.decode, data)
    found = await detector.predict(image)
    label = uploads.safe_name(name or filename)
    return await asyncio.to_thread(detector.answer, label, image, found, overlay, start)


def _ship_list(body: bytes) -> list[ShipRecord]:
    """The ship records a client sent (422 naming each problem, for anything else)."""
    try:
        return SHIP_LIST.validate_json(body)
    except pydantic.ValidationError as error:
        raise RequestError(422, _problems(error.errors())) from None


async def _answer(
    kind: str, found: Sequence[ShipRecord], as_json: Callable[[], str | bytes]
) -> Response:
    """The answer in ``kind``: the ships alone as CSV or GeoJSON, else ``as_json()``.

    Written in a worker thread: a scene's ships, or an overlay, take a while to serialise.
    """
    if kind == CSV:
        text = await asyncio.to_thread(ships.csv_text, found)
    elif kind == GEOJSON:
        text = await asyncio.to_thread(ships.geojson, found)
    else:
        text = await asyncio.to_thread(as_json)
    return Response(text, media_type=kind)


def _problems(errors: Sequence[dict]) -> str:
    """Pydantic's validation errors as one line: ``where: what; ...``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in errors
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``: 4xx for the request's, 500 for the server's."""

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, error: RequestError) -> JSONResponse:
        busy = isinstance(error, ServiceBusyError)
        headers = {"Retry-After": str(error.retry_after)} if busy else None
        return JSONResponse({"error": str(error)}, error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, error.status_code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _problems(error.errors())}, 422)

    @app.exception_handler(Exception)
    async def failure(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(error).__name__})"}, 500)
