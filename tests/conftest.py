"""Shared fixtures: the real Airbus sample (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
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
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not sign.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    second = run(command)
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    return first, second, stderr.decode(errors="replace")
