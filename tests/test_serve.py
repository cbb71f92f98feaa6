"""The HTTP service, started for real on 127.0.0.1 and spoken to over HTTP.

One server (the tiny synthetic model ``train.py`` trained, found without ``--model``) answers
every test but those of the limits (a second server, admitting one request at a time); its
thresholds are lowered so that the tiny model finds ships to compare. The HTTP protocol's
own behaviour (deadlines, connection limit, malformed HTTP) is tested in
``test_connections.py``; here, that ``serve.py`` sets it up.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, csv_rows, csv_ships, inference_command, run
from shipseg.scoring import ships
from waiting import wait_until

TILING = ["--tile-above", "96", "--tile", "64", "--overlap", "16"]
MAX_UPLOAD_MIB = 0.25


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``serve.py`` in a subprocess on an ephemeral port, with its address."""

    def __init__(self, results_dir: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, str(ROOT / "serve.py"), "--results-dir", str(results_dir)]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:  # a readiness probe: the only sign the subprocess gives is its answer
            wait_until(self._answers, "serve.py to answer /health", 180, self.process)
        except pytest.fail.Exception:
            self.stop()
            pytest.fail(f"serve.py did not start: {self.process.stdout.read().decode()}")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/health", timeout=2)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        """``(status, headers, body bytes)`` of one request; errors are answers too."""
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def predict(self, data: bytes, query: str = "", **headers):
        headers = {"Content-Type": "image/png", **headers}
        return self.request(f"/predict{query}", data, headers)

    def health_once(self, condition, what: str, timeout: float = 30) -> tuple[int, dict]:
        """``GET /health``'s ``(status, body)`` once ``condition(status, body)`` holds.

        Polled, with a deadline: the server is another process, and its counters in
        ``/health`` are what can be observed of it.
        """
        answers = []

        def holds() -> bool:
            status, _, body = self.request("/health")
            answers.append((status, json.loads(body)))
            return condition(*answers[-1])

        wait_until(holds, what, timeout, self.process)
        return answers[-1]


@pytest.fixture(scope="module")
def low_thresholds(trained_project, images) -> list[str]:
    """Post-processing flags under which the tiny model finds ships in a few of ``images``.

    The same flags go to ``inference.py`` and the service: the tiny model's tuned thresholds
    often keep no ship at all, which would leave nothing to compare.
    """
    from shipseg.model import loading
    from shipseg.predict import prediction

    project, _ = trained_project
    model = loading.load_model(project / "final" / "model.keras")
    pixels = [
        prediction.predict_images(model, [np.asarray(Image.open(path).convert("RGB"))])[0]
        for path in images[:4]
    ]
    top = float(np.quantile(np.concatenate([p.probabilities.ravel() for p in pixels]), 0.995))
    return [
        "--threshold",
        f"{top:.6f}",
        "--image-threshold",
        "0",
        "--ship-threshold",
        "0",
        "--min-ship-pixels",
        "2",
    ]


@pytest.fixture(scope="module")
def served(trained_project, low_thresholds):
    project, _ = trained_project
    flags = [*low_thresholds, *TILING, "--max-upload", str(MAX_UPLOAD_MIB), "--read-timeout", "2"]
    server = Server(project.parent, "--max-pixels", "1000000", *flags)
    yield server, project
    server.stop()


@pytest.fixture(scope="module")
def images(synthetic_dataset, tmp_path_factory) -> list[Path]:
    """Some test and training images, and one mosaic large enough to be tiled (160 x 160)."""
    folder = tmp_path_factory.mktemp("to_serve")
    rows = csv_rows(synthetic_dataset)
    with_ships = sorted(set(rows[rows.EncodedPixels != ""].ImageId))[:4]
    empty = sorted(set(rows[rows.EncodedPixels == ""].ImageId))[:2]
    paths = [synthetic_dataset / "train_v2" / name for name in [*with_ships, *empty]]
    tiles = [np.asarray(Image.open(path).convert("RGB")) for path in paths[:4]]
    mosaic = np.concatenate(
        [np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0
    )
    scene = Image.fromarray(np.pad(mosaic, ((0, 32), (0, 32), (0, 0))))
    scene.save(folder / "mosaic.png")
    scene.save(folder / "mosaic_jpeg.jpg", quality=95)  # scenes decode with Pillow, both ways
    return [*paths, folder / "mosaic_jpeg.jpg", folder / "mosaic.png"]


def test_the_service_says_it_is_ready_and_serves_the_latest_trained_model(served, low_thresholds):
    server, project = served
    status, _, body = server.request("/health")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _, body = server.request("/model")
    described = json.loads(body)
    config = json.loads((project / "final" / "config.json").read_text())
    tuned = config["postprocess"]
    assert described["model"] == f"{project.name}/final/model.keras"  # not the server's folders
    flags = dict(zip(low_thresholds[::2], low_thresholds[1::2], strict=True))
    assert described["postprocess"] == {
        **tuned,
        "threshold": float(flags["--threshold"]),
        "image_threshold": 0.0,
        "ship_threshold": 0.0,
        "min_ship_pixels": 2,
    }
    assert described["input"]["size"] == 32
    assert described["ship_head"] == (config["hyperparameters"]["ship_loss_weight"] > 0)
    status, headers, body = server.request("/")
    assert status == 200 and "text/html" in headers["Content-Type"]
    assert b'id="overlay"' in body and b'id="ships"' in body
    status, _, body = server.request("/openapi.json")
    assert "/predict" in json.loads(body)["paths"]


@pytest.mark.slow
def test_each_image_gets_the_ships_inference_writes_for_it(
    served, images, low_thresholds, tmp_path
):
    server, project = served
    out = tmp_path / "predictions"
    result = run(
        inference_command(
            project.parent, *map(str, images), "--out", str(out), *low_thresholds, *TILING
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    ship_table = csv_ships((out / "ships.csv").read_text())
    image_table = pd.read_csv(out / "images.csv", keep_default_na=False).set_index("ImageId")
    assert (submission.EncodedPixels != "").sum() >= 3  # enough ships to compare
    for path in images:
        status, _, body = server.predict(path.read_bytes(), f"?name={path.name}")
        assert status == 200, body
        answer = json.loads(body)
        rles = submission[submission.ImageId == path.name].EncodedPixels
        assert [ship["EncodedPixels"] for ship in answer["ships"]] == [rle for rle in rles if rle]
        expected = [ship for ship in ship_table if ship["ImageId"] == path.name]
        for ship, row in zip(answer["ships"], expected, strict=True):
            assert list(ship) == list(row) == list(ships.SHIP_COLUMNS)  # field for field
            for name, value in ship.items():
                if name == "corners":
                    np.testing.assert_allclose(value, row[name], atol=1e-6)
                elif isinstance(value, float):
                    assert value == pytest.approx(row[name], abs=1e-6), name
                else:
                    assert value == row[name], name
        assert (answer["height"], answer["width"]) == Image.open(path).size[::-1]
        evidence = image_table.loc[path.name]
        assert answer["top_pixel_probability"] == pytest.approx(evidence.top_pixel_probability)
        if answer["ship_probability"] is not None:
            assert answer["ship_probability"] == pytest.approx(evidence.ship_probability, abs=1e-6)


def test_an_upload_a_geojson_answer_and_an_overlay_describe_the_same_ships(served, images):
    server, _ = served
    path = images[-1]
    _, _, plain = server.predict(path.read_bytes())
    found = json.loads(plain)["ships"]
    boundary = "----shipseg"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="../../etc/{path.name}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    form += path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, body = server.predict(
        form, "?overlay=1", **{"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    uploaded = json.loads(body)
    assert status == 200 and uploaded["ships"] == [{**s, "ImageId": path.name} for s in found]
    assert uploaded["image"] == path.name  # a label only, never a path
    overlay = Image.open(io.BytesIO(base64.b64decode(uploaded["overlay_png"])))
    assert overlay.size == Image.open(path).size
    status, headers, body = server.predict(path.read_bytes(), Accept="application/geo+json")
    collection = json.loads(body)
    assert headers["Content-Type"].startswith("application/geo+json")
    assert [f["properties"] for f in collection["features"]] == [
        {name: value for name, value in ship.items() if name != "corners"} for ship in found
    ]
    status, headers, body = server.predict(path.read_bytes(), Accept="text/csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert csv_ships(body.decode()) == found


def jpeg_bytes(size: int = 64) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_REQUESTS = {
    "not an image": (b"hello, not an image", "image/png", 400, "not a readable JPEG or PNG"),
    "truncated JPEG": (jpeg_bytes()[:-300], "image/jpeg", 400, "truncated JPEG"),
    "empty body": (b"", "image/jpeg", 400, "empty body"),
    "over --max-upload": (
        b"\xff" * (int(MAX_UPLOAD_MIB * 2**20) + 1),
        "image/jpeg",
        413,
        "over the limit",
    ),
    "decompression bomb": (png_of(2000, 1000), "image/png", 413, "2000 x 1000 pixels"),
    "wrong content type": (jpeg_bytes(), "text/plain", 415, "unsupported Content-Type text/plain"),
    "a GIF": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/png", 400, "not a usable image"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_json_error_naming_the_problem_and_the_service_goes_on(
    served, case
):
    server, _ = served
    data, content_type, expected_status, message = BAD_REQUESTS[case]
    status, headers, body = server.predict(data, **{"Content-Type": content_type})
    assert status == expected_status, body
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert message in error and "Traceback" not in error
    assert server.predict(jpeg_bytes())[0] == 200


@pytest.mark.slow
def test_a_client_that_stops_sending_its_body_is_answered_408_and_dropped(served):
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 5000\r\n\r\n" + jpeg_bytes()[:100]
        )
        answer = b""
        while chunk := client.recv(4096):  # --read-timeout is 2 s; then the server closes
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in answer
    assert server.request("/health")[0] == 200


@pytest.mark.parametrize(
    "sent", [b"", b"POST /predict HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half the headers"]
)
def test_a_client_that_stalls_before_its_headers_end_is_answered_408_and_dropped(served, sent):
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(sent)
        answer = b""
        while chunk := client.recv(4096):  # --read-timeout is 2 s; then the server closes
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408")
    assert json.loads(body) == {"error": "the request's headers did not arrive within 2 s"}
    assert server.request("/health")[0] == 200


def test_sixteen_concurrent_requests_are_all_answered_correctly_in_shared_batches(served, images):
    server, _ = served
    expected = {  # each ship's ImageId is the ?name= given
        path.name: json.loads(server.predict(path.read_bytes(), f"?name={path.name}")[2])["ships"]
        for path in images[:4]
    }
    batches_before = json.loads(server.request("/health")[2])["batches_predicted"]

    def ask(index: int):
        path = images[index % 4]
        status, _, body = server.predict(path.read_bytes(), f"?name={path.name}")
        return path.name, status, json.loads(body)

    with concurrent.futures.ThreadPoolExecutor(16) as clients:
        answers = list(clients.map(ask, range(16)))
    assert all(status == 200 for _, status, _ in answers)
    assert all(answer["ships"] == expected[name] for name, _, answer in answers)
    batches = json.loads(server.request("/health")[2])["batches_predicted"] - batches_before
    assert batches < 16  # requests shared forward passes


@pytest.fixture(scope="module")
def small_server(trained_project):
    """A server admitting one request at a time (and so 1 * 2 + 8 = 10 connections)."""
    project, _ = trained_project
    server = Server(project.parent, "--max-pending", "1", "--read-timeout", "20")
    yield server
    server.stop()


@pytest.mark.slow
def test_a_full_service_answers_503_with_retry_after(small_server):
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=30) as holder:
        holder.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 5000\r\n\r\n" + jpeg_bytes()[:100]
        )
        # The first request is admitted and waits for its body.
        small_server.health_once(
            lambda _, health: health["requests_in_progress"] == 1, "the first request admitted"
        )
        status, headers, body = small_server.predict(jpeg_bytes(), **{"Content-Type": "image/jpeg"})
    assert status == 503 and headers["Retry-After"] == "1"
    assert "busy" in json.loads(body)["error"]


@pytest.mark.slow
def test_serve_holds_two_connections_per_admitted_request_and_eight_more(small_server):
    """``--max-pending 1``: 10 connections (the protocol itself: ``test_connections.py``)."""

    def health_beside(idle_count: int) -> tuple[int, dict]:
        """``/health`` once the server has accepted ``idle_count`` idle connections (or refuses)."""
        idle = [
            socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(idle_count)
        ]
        try:
            return small_server.health_once(
                lambda status, body: status == 503 or body["connections_open"] == idle_count + 1,
                f"{idle_count} idle connections accepted",
            )
        finally:
            for connection in idle:
                connection.close()

    status, body = health_beside(9)
    assert status == 200 and body["connections_open"] == 10
    status, body = health_beside(10)
    assert status == 503 and "too many connections (at most 10)" in body["error"]


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_page_shows_the_overlay_and_the_ship_table_of_a_chosen_image(served, images):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    server, _ = served
    path = images[-1]
    found = json.loads(server.predict(path.read_bytes())[2])["ships"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#result.shown", timeout=120_000)
        size = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight]")
        cells = page.locator("#ships tbody tr td:first-child").all_inner_texts()
        summary = page.inner_text("#summary")
        with page.expect_download() as download:
            page.click("#csv")
        downloaded = Path(download.value.path()).read_text()
        browser.close()
    assert size == list(Image.open(path).size)
    assert cells == [str(ship["ship"]) for ship in found] and len(found) > 0
    assert f"{len(found)} ship" in summary and path.name in summary
    assert csv_ships(downloaded) == [{**ship, "ImageId": path.name} for ship in found]
