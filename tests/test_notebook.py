"""The EDA notebook: it runs headless without a cell error, and the committed copy shows its outputs.

The notebook is executed in memory (the committed ``eda.ipynb`` is never rewritten) with a kernel
that is the Python running pytest, on the real sample when ``../shared`` has it and always on a
tiny synthetic dataset, passed through ``EDA_DATA_DIR``.
"""

import hashlib
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from shipseg.data import synthetic

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "eda.ipynb"
SAMPLE = REPO.parent / "shared" / "data" / "airbus-sample"
CELL_TIMEOUT_S = 300  # the slowest cell takes about 15 s on the sample on 2 cores
MAX_NOTEBOOK_BYTES = 1_500_000
KERNEL_CHECK = "import sys\nprint(sys.prefix)"


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """Makes the kernel name "python3" start the interpreter that runs pytest.

    A user-level kernelspec (``~/.local/share/jupyter/kernels/python3``) could point at another
    Python; a spec written into ``JUPYTER_PATH``, which jupyter_client searches first, cannot.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pytest)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def stream_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def data_used(notebook) -> str:
    """What the first two code cells print: the parameter, and which data the notebook read."""
    return "".join(map(stream_text, code_cells(notebook)[:2]))


def execute_copy(data_dir: Path | None, kernel_name: str, monkeypatch, tmp_path: Path):
    """Runs a copy of the notebook from the repository root; returns the executed copy.

    Args:
        data_dir: Passed as ``EDA_DATA_DIR``; None runs with the notebook's default ``DATA_DIR``.
    """
    if data_dir is None:
        monkeypatch.delenv("EDA_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("EDA_DATA_DIR", str(data_dir))
    committed = NOTEBOOK.read_bytes()
    notebook = nbformat.reads(committed.decode(), as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(REPO)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # kept for debugging a failure
    assert hashlib.sha256(NOTEBOOK.read_bytes()).digest() == hashlib.sha256(committed).digest()
    # The kernel really was this interpreter (its environment), not some other python3.
    assert stream_text(notebook.cells[-1]).strip() == sys.prefix
    return notebook


def check_outputs(notebook) -> None:
    for index, cell in enumerate(code_cells(notebook)):
        assert cell.outputs, f"code cell {index} has no output:\n{cell.source[:200]}"
        errors = [out for out in cell.outputs if out.output_type == "error"]
        assert not errors, f"code cell {index} has an error output: {errors[0].get('ename')}"
    images = [
        out
        for cell in code_cells(notebook)
        for out in cell.outputs
        if {"image/png", "image/jpeg"} & set(out.get("data", {}))
    ]
    assert len(images) >= 8, f"only {len(images)} figures embedded"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real sample not found at {SAMPLE}")
@pytest.mark.slow
def test_notebook_runs_on_real_sample(python3_kernel, monkeypatch, tmp_path):
    notebook = execute_copy(None, python3_kernel, monkeypatch, tmp_path)
    check_outputs(notebook)
    assert "Using real data" in data_used(notebook)


@pytest.mark.slow
def test_notebook_runs_on_tiny_synthetic_data(python3_kernel, monkeypatch, tmp_path):
    data_dir = synthetic.generate_synthetic_dataset(
        tmp_path / "synthetic",
        synthetic.SyntheticConfig(train_images=40, test_images=4, image_size=64),
    )
    notebook = execute_copy(data_dir, python3_kernel, monkeypatch, tmp_path)
    check_outputs(notebook)
    assert "SYNTHETIC" in data_used(notebook)


def test_committed_notebook_has_outputs():
    assert NOTEBOOK.stat().st_size < MAX_NOTEBOOK_BYTES
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    check_outputs(notebook)
    first = code_cells(notebook)[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert "DATA_DIR" in first.source
    for cell in code_cells(notebook):
        stderr = [out for out in cell.outputs if out.get("name") == "stderr"]
        assert not stderr, f"warnings in the committed notebook: {stderr[0]['text'][:300]}"
    assert notebook.cells[-1].cell_type == "markdown"
    assert notebook.cells[-1].source.startswith("## Conclusions")
