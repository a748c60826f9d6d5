"""The Colab notebooks: committed clean, openable in Colab, and executed top to bottom.

Each notebook runs in a fresh Jupyter kernel (nbclient) with the test's environment; a cell that
raises fails the test with the cell's traceback. The structural checks (badge, install cell,
stripped outputs) are cheap and run first so a badly committed notebook fails fast.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = (
    "01_attention.ipynb",
    "02_transformer_piece_by_piece.ipynb",
    "03_train_a_translator.ipynb",
    "04_pretrained_marian.ipynb",
)
COLAB_URL = "https://colab.research.google.com/github/flax-transformer/flax-transformer/blob/main/notebooks/"
INSTALL_MARKER = 'importlib.util.find_spec("flax_transformer") is None'
# A notebook must run in about 5 minutes on a 2-core CPU; the kernel gets twice that per cell.
CELL_TIMEOUT_S = 600


def _load(name: str) -> dict:
    return json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))


def test_every_notebook_is_committed_and_tested():
    present = sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb"))
    assert present == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_in_colab_and_is_committed_clean(name):
    notebook = _load(name)
    cells = notebook["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown"
    assert "colab-badge.svg" in first, "the first cell carries the Open-in-Colab badge"
    assert f"({COLAB_URL}{name})" in first, "the badge opens this very notebook"
    code_cells = [cell for cell in cells if cell["cell_type"] == "code"]
    assert INSTALL_MARKER in "".join(code_cells[0]["source"]), (
        "the first code cell installs the package when it is missing (Colab)"
    )
    for index, cell in enumerate(code_cells):
        assert cell.get("outputs") == [], f"code cell {index} of {name} has committed outputs"
        assert cell.get("execution_count") is None, f"code cell {index} has an execution count"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    size = (NOTEBOOK_DIR / name).stat().st_size
    assert size < 100_000, f"{name} is {size} bytes: keep notebooks small (outputs stripped)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_the_public_api(name):
    """Notebooks teach the library as users import it, never its private helpers."""
    source = "\n".join(
        "".join(cell["source"]) for cell in _load(name)["cells"] if cell["cell_type"] == "code"
    )
    private = re.findall(r"\bft\._\w+|from flax_transformer\.\w+ import _\w+", source)
    assert not private, f"{name} uses private names: {private}"


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="needs the dev extra: pip install '.[dev]'")
    import nbformat

    # The kernel inherits this environment: a private TFDS directory, a non-interactive
    # matplotlib, and the CPU (the notebooks say how much faster a Colab GPU is).
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # files a notebook writes go here
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.0f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert images >= 3, f"{name} drew {images} figures: notebooks show pictures"
