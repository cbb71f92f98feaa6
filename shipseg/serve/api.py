"""The service's routes: FastAPI in front of a ``service.Detector`` (see ``shipseg.serve.service``).

Every error is JSON, ``{"error": "..."}`` with a 4xx status that says what kind of problem it
was (5xx only for the server's own failures), never a traceback; no route reads a file a
request names.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from shipseg.core.errors import RequestError, ServiceBusyError
from shipseg.serve import uploads
from shipseg.serve.service import Detector

PAGE = Path(__file__).with_name("page.html")
GEOJSON = "application/geo+json"
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


def create_app(detector: Detector) -> FastAPI:
    """The FastAPI application serving ``detector``."""
    app = FastAPI(
        title="Ship detection",
        summary="Ships in satellite images, found by a U-Net trained with this toolkit.",
    )
    admission = Admission(detector.settings.max_pending)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Whether the model is loaded and answering, and how busy the service is."""
        alive = detector.batcher.alive
        body = {
            "status": "ready" if alive else "failed: the network thread stopped",
            "requests_in_progress": admission.busy,
            "batches_predicted": detector.batcher.batches,
        }
        return JSONResponse(body, 200 if alive else 503)

    @app.get("/model")
    async def model() -> dict:
        """What is served: the model file, its input and tuned post-processing, the limits."""
        return detector.describe_model()

    @app.post("/predict", openapi_extra=UPLOAD_BODY)
    async def predict(
        request: Request,
        overlay: bool = Query(False, description="add the overlay PNG (base64) to the answer"),
        name: str | None = Query(None, description="the image's name in the answer"),
    ) -> Response:
        """One image in (body or multipart upload), its ships out (JSON or GeoJSON)."""
        with admission:
            answer = await _predict(detector, request, overlay, name)
        if GEOJSON in request.headers.get("accept", ""):
            return Response(answer.geojson(), media_type=GEOJSON)
        return JSONResponse(await asyncio.to_thread(answer.json))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    return app


async def _predict(detector: Detector, request: Request, overlay: bool, name: str | None):
    """Reads, decodes, predicts and describes one uploaded image."""
    start = time.perf_counter()
    settings = detector.settings
    try:
        body = await uploads.read_body(
            request.stream(),
            request.headers.get("content-length"),
            settings.max_upload,
            settings.read_timeout,
        )
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before sending the whole body") from None
    content_type = request.headers.get("content-type")
    data, filename = await asyncio.to_thread(uploads.image_bytes, content_type, body)
    del body
    image = await asyncio.to_thread(detector.decode, data)
    found = await detector.predict(image)
    label = uploads.safe_name(name or filename)
    return await asyncio.to_thread(detector.answer, label, image, found, overlay, start)


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
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        return JSONResponse({"error": problems}, 422)

    @app.exception_handler(Exception)
    async def failure(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(error).__name__})"}, 500)
