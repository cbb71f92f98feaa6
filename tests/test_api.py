"""The service's routes, fast: the real ``Detector`` and app around a stand-in network.

The stand-in is a U-Net's ``predict_on_batch`` with a ship head that calls each pixel's red
its ship probability, so an image's ships are known without training anything. Everything
else is the service's own: the model file's tuned settings, decoding, batching,
``detection.describe``, the answers. Most tests speak to the app through FastAPI's
``TestClient``; those of the HTTP protocol (HEAD on the wire, an oversized body sent before
the answer is read) through uvicorn on 127.0.0.1 in a thread. ``test_serve.py`` runs
``serve.py`` itself with a trained model.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import (
    ThreadServer,
    csv_ships,
    jpeg,
    png_header,
    with_declared_size,
    without_scan_data,
)
from shipseg.data import synthetic
from shipseg.predict import detection, prediction, records
from shipseg.scoring import ships
from shipseg.scoring.ships import ShipRecord
from shipseg.serve import api, connections
from shipseg.serve.service import Detector, ServeSettings

POSTPROCESS = {
    "threshold": 0.5,
    "image_threshold": 0.5,
    "min_ship_pixels": 10,
    "flip_tta": False,
    "ship_threshold": 0.5,
    "ship_shape": "mask",
}
MAX_UPLOAD = 256 * 2**10
MAX_PIXELS = 1_000_000
JSON, CSV, GEOJSON = "application/json", "text/csv", "application/geo+json"


class StandInNetwork:
    """Keras's ``predict_on_batch`` of a U-Net with a ship head: red pixels are ships."""

    def predict_on_batch(self, images: np.ndarray) -> dict:
        probabilities = np.asarray(images, np.float32)[..., :1] / 255
        return {"ship_probability": probabilities, "has_ship": probabilities.max(axis=(1, 2))}


def harbour() -> np.ndarray:
    """A 96 x 128 image of blue sea with two red ships: 40 x 8 along the rows, and a tilted one."""
    image = np.zeros((96, 128, 3), np.uint8)
    image[..., 2] = 90
    image[20:28, 10:50, 0] = 230
    image[22, 30, 0] = 255
    tilted = synthetic.oriented_rectangle(np.array([60.0, 90.0]), 30, 6, 0.5, (96, 128))
    image[tilted, 0] = 200
    return image


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


HARBOUR = png(harbour())


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """``results/stand_in/final/model.keras`` and its tuned settings (the file is not read)."""
    final = tmp_path_factory.mktemp("results") / "stand_in" / "final"
    final.mkdir(parents=True)
    (final / "model.keras").write_bytes(b"")
    config = {"status": "complete", "postprocess": POSTPROCESS}
    (final / "config.json").write_text(json.dumps(config))
    return final / "model.keras"


def stand_in_detector(model_file: Path) -> Detector:
    settings = ServeSettings(
        results_dir=str(model_file.parents[2]), max_upload=MAX_UPLOAD, max_pixels=MAX_PIXELS
    )
    return Detector(settings, model=StandInNetwork())


@pytest.fixture(scope="module")
def detector(model_file):
    detector = stand_in_detector(model_file)
    yield detector
    detector.batcher.close()


@pytest.fixture(scope="module")
def client(detector):
    with TestClient(api.create_app(detector)) as client:
        yield client


def predict(client: TestClient, data: bytes, query: str = "", **headers):
    headers = {"Content-Type": "image/png", **headers}
    return client.post(f"/predict{query}", content=data, headers=headers)


def test_health_and_model_say_what_is_served_and_head_answers_wherever_get_does(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    described = client.get("/model").json()
    assert described["model"] == "stand_in/final/model.keras" and described["ship_head"]
    assert described["postprocess"] == POSTPROCESS and described["input"] is None
    for path in ("/health", "/model", "/", "/docs", "/openapi.json"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert client.head("/predict").status_code == 405  # no GET there either


def test_an_image_gets_its_known_ships_as_json_csv_and_geojson(client):
    answer = predict(client, HARBOUR, "?name=harbour.png&overlay=1")
    assert answer.status_code == 200 and answer.headers["content-type"] == JSON
    body = answer.json()
    assert (body["image"], body["height"], body["width"]) == ("harbour.png", 96, 128)
    assert body["ship_probability"] == 1.0 and body["top_pixel_probability"] == 1.0
    first, tilted = (ShipRecord.model_validate(ship) for ship in body["ships"])
    assert (first.ship, first.area_px, first.length_px, first.width_px) == (1, 320, 40, 8)
    assert (first.row, first.column, first.heading_deg) == (23.5, 29.5, 90.0)
    assert first.max_probability == 1.0 and first.ImageId == "harbour.png"
    assert tilted.ship == 2 and tilted.length_px == pytest.approx(30, abs=1)
    assert tilted.mean_probability == round(200 / 255, 4)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.size == (128, 96)
    table = pd.read_csv(io.StringIO(predict(client, HARBOUR, Accept=CSV).text))
    assert tuple(table.columns) == ships.SHIP_COLUMNS and list(table.ship) == [1, 2]
    geojson = predict(client, HARBOUR, Accept=GEOJSON)
    assert geojson.headers["content-type"] == GEOJSON
    assert [f["properties"]["ship"] for f in geojson.json()["features"]] == [1, 2]
    assert predict(client, HARBOUR).json()["overlay_png"] is None


def test_the_ships_route_writes_the_records_a_client_holds_as_predict_does(client):
    answer = predict(client, HARBOUR, "?name=harbour.png").json()
    for kind in (CSV, GEOJSON, JSON):
        written = client.post("/ships", json=answer["ships"], headers={"Accept": kind})
        assert written.status_code == 200 and written.headers["content-type"].startswith(kind)
        expected = predict(client, HARBOUR, "?name=harbour.png", Accept=kind)
        if kind == JSON:
            assert written.json() == expected.json()["ships"]
        else:
            assert written.content == expected.content


def test_accept_chooses_the_first_format_it_names_and_json_otherwise(client):
    assert api.answer_format("text/csv, application/geo+json") == CSV
    assert api.answer_format("application/geo+json;q=0.9, application/json") == GEOJSON
    assert api.answer_format("image/png, */*") == api.answer_format(None) == JSON
    assert predict(client, HARBOUR, Accept="*/*").headers["content-type"] == JSON


def test_one_image_has_the_same_ships_field_for_field_in_inference_tables_and_the_service(
    client, detector, tmp_path
):
    path = tmp_path / "harbour.png"
    path.write_bytes(HARBOUR)
    # Inference's path: its prediction loop, describe, the record on disk, the tables from it.
    table = pd.DataFrame({"path": [str(path)]})
    (found,) = prediction.predict_table(detector.model, table, detector.input_config)
    _, record = detection.describe(path.name, found, detector.postprocess)
    records.write_record(tmp_path, path.name, record)
    assert records.write_tables({0: records.read_record(tmp_path, path.name)}, tmp_path) == 2
    ships_csv = (tmp_path / "ships.csv").read_text()
    ships_geojson = json.loads((tmp_path / "ships.geojson").read_text())
    answers = {
        kind: predict(client, HARBOUR, f"?name={path.name}", Accept=kind)
        for kind in (JSON, CSV, GEOJSON)
    }
    assert answers[CSV].text == ships_csv
    assert answers[GEOJSON].json() == ships_geojson
    served = answers[JSON].json()["ships"]
    assert ships_csv.splitlines()[0].split(",") == list(ships.SHIP_COLUMNS)
    written = csv_ships(ships_csv)
    assert len(written) == len(served) == len(ships_geojson["features"]) == 2
    for row, ship, feature in zip(written, served, ships_geojson["features"], strict=True):
        assert list(row) == list(ship) == list(ships.SHIP_COLUMNS)
        assert row == ship
        properties, ring = feature["properties"], feature["geometry"]["coordinates"][0]
        assert properties == {name: value for name, value in ship.items() if name != "corners"}
        assert [[row, column] for column, row in ring] == [*ship["corners"], ship["corners"][0]]


def test_the_openapi_page_declares_the_answer_and_its_ship_records_in_the_csvs_order(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert tuple(schemas["ShipRecord"]["properties"]) == ships.SHIP_COLUMNS
    assert schemas["PredictAnswer"]["properties"]["ships"]["items"] == {
        "$ref": "#/components/schemas/ShipRecord"
    }
    content = document["paths"]["/predict"]["post"]["responses"]["200"]["content"]
    assert content[JSON]["schema"] == {"$ref": "#/components/schemas/PredictAnswer"}
    assert {CSV, GEOJSON} <= set(content)


TRUNCATED = jpeg()[:-300]
ERRORS = {
    "not an image": ("/predict", b"hello", "image/png", 400, "not a readable JPEG or PNG"),
    "a truncated JPEG": ("/predict", TRUNCATED, "image/jpeg", 400, "truncated JPEG"),
    "a JPEG without scan data": (
        "/predict",
        without_scan_data(jpeg()),
        "image/jpeg",
        400,
        "the JPEG holds no image data",
    ),
    "an empty body": ("/predict", b"", "image/jpeg", 400, "empty body"),
    "a body over --max-upload": (
        "/predict",
        b"\xff" * (MAX_UPLOAD + 1),
        "image/jpeg",
        413,
        "over the limit",
    ),
    "an image over --max-pixels": (
        "/predict",
        png(np.zeros((1000, 1001, 3), np.uint8)),
        "image/png",
        413,
        "1001 x 1000 pixels, over the limit of 1000000 pixels",
    ),
    "a PNG declaring 50000 x 50000 pixels": (
        "/predict",
        png_header(50_000, 50_000),
        "image/png",
        413,
        "50000 x 50000 pixels",
    ),
    "a JPEG declaring 50000 x 50000 pixels": (
        "/predict",
        with_declared_size(jpeg(), 50_000, 50_000),
        "image/jpeg",
        413,
        "50000 x 50000 pixels",
    ),
    "a wrong content type": ("/predict", jpeg(), "text/plain", 415, "unsupported Content-Type"),
    "a bad query": ("/predict?overlay=perhaps", jpeg(), "image/jpeg", 422, "query.overlay"),
    "ships that are not records": ("/ships", b'[{"ship": 1}]', JSON, 422, "0.ImageId: Field"),
    "ships that are not JSON": ("/ships", b"[{", JSON, 422, "Invalid JSON"),
    "ships that are not sent as JSON": ("/ships", b"[]", "text/csv", 415, "as application/json"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_a_bad_request_gets_a_4xx_json_error_naming_the_problem(client, case):
    path, data, content_type, status, message = ERRORS[case]
    answer = client.post(path, content=data, headers={"Content-Type": content_type})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == JSON and message in answer.json()["error"]
    assert predict(client, HARBOUR).status_code == 200


def test_unknown_routes_and_methods_get_json_errors_too(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    refused = client.get("/predict")
    assert refused.status_code == 405 and refused.json() == {"error": "Method Not Allowed"}


def test_bytes_after_a_jpegs_end_marker_change_nothing_in_the_answer(client):
    data = jpeg(128, 96)
    plain = predict(client, data, **{"Content-Type": "image/jpeg"})
    trailing = predict(client, data + b"\x00 and more", **{"Content-Type": "image/jpeg"})
    assert plain.status_code == trailing.status_code == 200
    assert trailing.json()["ships"] == plain.json()["ships"]


@pytest.fixture(scope="module")
def server(model_file):
    """The app over the service's HTTP protocol, by uvicorn on 127.0.0.1 in a thread."""
    detector = stand_in_detector(model_file)
    limits = {"read_timeout": 5.0, "max_connections": detector.settings.max_connections}
    protocol = connections.protocol(**limits, drain_limit=16 * 2**20)
    with ThreadServer(api.create_app(detector), protocol).running() as server:
        yield server
    detector.batcher.close()


def urlopen(server: ThreadServer, path: str, data=None, method=None, headers=None):
    """``(status, headers, body)`` of one urllib request: the whole body sent, then read."""
    url = f"http://127.0.0.1:{server.port}{path}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def chunks(data: bytes, size: int = 2**16):
    """``data`` in pieces: urllib sends an iterable without a Content-Length, chunked."""
    return (data[start : start + size] for start in range(0, len(data), size))


@pytest.mark.parametrize("chunked", [False, True], ids=["Content-Length", "chunked"])
def test_a_client_posting_an_oversized_body_before_reading_gets_the_413_not_a_reset(
    server, chunked
):
    size = MAX_UPLOAD + 3 * 2**20
    data = b"\xff" * size
    headers = {"Content-Type": "image/jpeg"}
    status, _, body = urlopen(
        server, "/predict", chunks(data) if chunked else data, "POST", headers
    )
    assert status == 413
    limit = f"over the limit of {MAX_UPLOAD}"
    assert limit in json.loads(body)["error"]
    assert urlopen(server, "/health")[0] == 200


def test_head_answers_on_the_wire_with_gets_headers_and_no_body(server):
    status, headers, body = urlopen(server, "/health", method="HEAD")
    assert status == 200 and body == b"" and headers["Content-Type"] == JSON
    assert int(headers["Content-Length"]) == len(urlopen(server, "/health")[2])


def test_health_counts_the_open_connections(server):
    server.wait_for_connections(0)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        server.wait_for_connections(3)
        status, _, body = urlopen(server, "/health")
    finally:
        for connection in idle:
            connection.close()
    assert status == 200 and json.loads(body)["connections_open"] == 4


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


def test_the_page_shows_the_records_fields_and_downloads_the_services_own_files(server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    (tmp_path / "harbour.png").write_bytes(HARBOUR)
    query = "/predict?name=harbour.png"
    expected = {
        kind: urlopen(server, query, HARBOUR, "POST", {"Content-Type": "image/png", "Accept": kind})
        for kind in (CSV, GEOJSON)
    }
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.set_input_files("#file", str(tmp_path / "harbour.png"))
        page.wait_for_selector("#result.shown", timeout=60_000)
        header = page.locator("#ships thead th").all_inner_texts()
        rows = [
            row.locator("td").all_inner_texts() for row in page.locator("#ships tbody tr").all()
        ]
        downloads = {}
        for button, kind in (("#csv", CSV), ("#geojson", GEOJSON)):
            with page.expect_download() as download:
                page.click(button)
            saved = Path(download.value.path()).read_bytes()  # gone once the browser closes
            downloads[kind] = (download.value.suggested_filename, saved)
        browser.close()
    text = ("ImageId", "corners", "EncodedPixels")
    assert header == [name for name in ships.SHIP_COLUMNS if name not in text]
    table = pd.read_csv(io.StringIO(expected[CSV][2].decode()))[header]
    assert [[float(cell) for cell in row] for row in rows] == table.astype(float).values.tolist()
    assert downloads[CSV][0] == "harbour.png.ships.csv"
    assert downloads[CSV][1] == expected[CSV][2]
    assert downloads[GEOJSON][0] == "harbour.png.ships.geojson"
    assert downloads[GEOJSON][1] == expected[GEOJSON][2]
