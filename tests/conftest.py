"""Shared fixtures: the real Airbus sample (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shipseg.core import errors
from shipseg.data import airbus, synthetic
from shipseg.data.rle import rle_decode

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AIRBUS_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "airbus-sample"
DEFAULT_MOBILENET_WEIGHTS = (
    REPO_ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet_no_top.weights.h5"
)

# Small on purpose: 40 labelled 64 x 64 images (13 with ships for this seed), 4 test images.
SYNTHETIC_CONFIG = synthetic.SyntheticConfig(train_images=40, test_images=4, image_size=64, seed=3)


@pytest.fixture(scope="session")
def airbus_sample() -> Path:
    """The real Airbus sample (``images/``, the ship CSV, ``test_images/``); skips when absent.

    Looked up next to the repository (``../shared/data/airbus-sample``) unless the environment
    variable ``AIRBUS_SAMPLE_DIR`` names another folder. The data is only read, never copied.
    """
    path = Path(os.environ.get("AIRBUS_SAMPLE_DIR", DEFAULT_AIRBUS_SAMPLE))
    try:
        airbus.find_layout(path)
    except errors.DataError as error:
        pytest.skip(f"real Airbus sample not found at {path}: {error} (set AIRBUS_SAMPLE_DIR)")
    return path


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """MobileNetV2's ImageNet weights (``../shared/weights``, or ``MOBILENET_WEIGHTS``); skips
    when absent, as on a machine that has neither the file nor the internet."""
    path = Path(os.environ.get("MOBILENET_WEIGHTS", DEFAULT_MOBILENET_WEIGHTS))
    if not path.is_file():
        pytest.skip(f"MobileNetV2 ImageNet weights not found at {path} (set MOBILENET_WEIGHTS)")
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Kaggle layout, generated once per test session.

    Treat it as read-only: tests that damage files must work on a copy (``dataset_copy``).
    """
    return synthetic.generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic") / "airbus", SYNTHETIC_CONFIG
    )


@pytest.fixture(scope="session")
def synthetic_table(synthetic_dataset):
    """``read_dataset`` of ``synthetic_dataset`` (one row per image); do not modify it."""
    messages = []
    table = airbus.read_dataset(synthetic_dataset, log=messages.append)
    assert not messages, f"the synthetic dataset should read cleanly, got {messages}"
    return table


@pytest.fixture()
def dataset_copy(synthetic_dataset, tmp_path) -> Path:
    """A private copy of ``synthetic_dataset`` that a test may damage."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "airbus"))


# ---------------------------------------------------------------------------------------------
# The command lines, run for real on the tiny synthetic dataset
# ---------------------------------------------------------------------------------------------

ROOT = REPO_ROOT
# A budget of seconds: 2-level, 4-filter U-Nets on 32-pixel crops.
TINY = [
    "--input-size",
    "32",
    "--images-per-epoch",
    "16",
    "--hp",
    "levels=2",
    "--hp",
    "base_filters=4",
    "--hp",
    "batch_size=8",
    "--latency-size",
    "32",
    "--latency-runs",
    "3",
    "--verbose",
    "0",
]


def search_command(data_dir, results_dir, *extra):
    return [
        sys.executable,
        str(ROOT / "search.py"),
        "--data-dir",
        str(data_dir),
        "--results-dir",
        str(results_dir),
        "--project",
        "tiny",
        *TINY,
        *extra,
    ]


def run(command, timeout=600, env=None):
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def finished_search(synthetic_dataset, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    result = run(search_command(synthetic_dataset, results, "--max-epochs", "2", "--factor", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return results / "tiny", result


# ---------------------------------------------------------------------------------------------
# Helpers shared by several test modules
# ---------------------------------------------------------------------------------------------


def union_mask(rles, shape) -> np.ndarray:
    """The union of an image's ship masks (pixels of any ship)."""
    mask = np.zeros(shape, dtype=np.uint8)
    for rle in rles:
        mask |= rle_decode(rle, shape)
    return mask


def pil_image(path) -> np.ndarray:
    """The image as an independent decoder (Pillow) sees it."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def csv_rows(dataset: Path) -> pd.DataFrame:
    """The dataset's ship CSV as written, one row per ship (or per empty image)."""
    return pd.read_csv(dataset / airbus.CSV_NAME, dtype=str, keep_default_na=False)


def csv_ships(text: str) -> list[dict]:
    """The rows of a ``ships.csv`` with the service's JSON values (numbers read, empty cells
    null, corners parsed), each checked as a ship record."""
    from shipseg.scoring.ships import ShipRecord

    found = []
    for row in csv.DictReader(io.StringIO(text)):
        cells = {name: value or None for name, value in row.items()}
        cells["corners"] = json.loads(row["corners"])
        found.append(ShipRecord.model_validate(cells).model_dump(mode="json"))
    return found


def jpeg(width: int = 64, height: int = 48, **options) -> bytes:
    """A JPEG of noise; ``options`` go to Pillow's JPEG writer."""
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) declares another size; the pixel data unchanged."""
    frame = data.index(b"\xff\xc0")
    size = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return data[: frame + 5] + size + data[frame + 9 :]


def without_scan_data(data: bytes, keep_scan_header: bool = False) -> bytes:
    """The JPEG's headers and its end marker, without its pixels (nor, maybe, its scan)."""
    scan = data.index(b"\xff\xda")
    length = int.from_bytes(data[scan + 2 : scan + 4], "big")
    return data[: scan + 2 + length if keep_scan_header else scan] + b"\xff\xd9"


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only its header: its size, without any pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def train_command(results_dir, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--results-dir", str(results_dir), *extra]


def inference_command(results_dir, *extra):
    return [sys.executable, str(ROOT / "inference.py"), "--results-dir", str(results_dir), *extra]


@pytest.fixture(scope="session")
def trained_project(finished_search):
    project, _ = finished_search
    result = run(
        train_command(
            project.parent, "--best", "--epochs", "2", "--patience", "1", "--verbose", "0"
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return project, result


def second_run_while_the_first_holds_its_lock(command: list[str], sign: Path):
    """Starts ``command``; once ``sign`` exists (the first holds its folder's lock), stops it
    (SIGSTOP: however fast it would finish), runs ``command`` again, lets the first go on.

    Returns:
        ``(first, second, first_stderr)``: the finished first process, the second's result.
    """
    from waiting import wait_until

    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(sign.exists, f"{sign} (the first run holding its lock)", 300, process=first)
    first.send_signal(signal.SIGSTOP)
    second = run(command)
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    return first, second, stderr.decode(errors="replace")


class ThreadServer:
    """uvicorn serving an ASGI app in a thread of the tests' process, on 127.0.0.1.

    Waits on events, not time: ``start`` returns once uvicorn listens, and
    ``wait_for_connections`` once the server has accepted (or closed) enough connections.

    Args:
        app: The ASGI application.
        protocol: The HTTP protocol class (``connections.protocol(...)``).
    """

    def __init__(self, app, protocol):
        import uvicorn

        self.changed = threading.Condition()
        self.open_connections = 0
        server = self

        class Counted(protocol):
            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                server._count(+1)

            def connection_lost(self, exc) -> None:
                super().connection_lost(exc)
                server._count(-1)

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets=sockets)
                server.ready.set()

        self.ready = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        # A connection left open outlasts the client's patience (60 s of keep-alive).
        config = uvicorn.Config(
            app, lifespan="off", log_level="error", timeout_keep_alive=60, http=Counted
        )
        self.server = Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True
        )

    def _count(self, change: int) -> None:
        with self.changed:
            self.open_connections += change
            self.changed.notify_all()

    def wait_for_connections(self, count: int, timeout: float = 30) -> None:
        """Returns once exactly ``count`` connections are open on the server's side."""
        with self.changed:
            done = self.changed.wait_for(lambda: self.open_connections == count, timeout)
        assert done, f"{self.open_connections} connections open, waited for {count}"

    @contextlib.contextmanager
    def running(self) -> Iterator[ThreadServer]:
        """Serves for the block; stops (and waits for the thread) after it."""
        self.listener.listen()
        self.thread.start()
        assert self.ready.wait(30), "uvicorn did not start"
        try:
            yield self
        finally:
            self.server.should_exit = True
            self.thread.join(timeout=30)
            self.listener.close()
