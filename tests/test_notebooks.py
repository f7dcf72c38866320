"""Execute the example notebooks end to end (quick mode: reduced sizes, CPU)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbclient  # noqa: E402  (the test extra installs both; a missing one must fail)
import nbformat  # noqa: E402
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
sys.path.insert(0, str(NOTEBOOK_DIR))
from _nb import kernel_name  # noqa: E402  (the notebooks' own scaffolding)

TIMEOUT_S = 900  # per cell; the whole quick-mode suite takes a few minutes on 2 cores


def test_four_notebooks_exist():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        # committed without outputs
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow  # ~110 s each on a quiet 2-core machine: `pytest -m slow` (.ci/run) runs them
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("JAXLRP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name(), timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
