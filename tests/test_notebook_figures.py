"""notebooks/_nb.record and benchmarks/notebook_figures.py: figures reach the results file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


NB = _load("jaxlrp_nb_scaffolding", ROOT / "notebooks" / "_nb.py")
NF = _load("bench_notebook_figures", ROOT / "benchmarks" / "notebook_figures.py")


def test_record_does_nothing_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv(NB.FIGURES_ENV, raising=False)
        else:
            monkeypatch.setenv(NB.FIGURES_ENV, value)
        NB.record("a", 1.0)
    assert list(tmp_path.iterdir()) == []


def test_record_writes_and_merges(monkeypatch, tmp_path):
    path = tmp_path / "sub" / "figures.json"
    monkeypatch.setenv(NB.FIGURES_ENV, str(path))
    NB.record("a", 1)
    NB.record("b", np.float32(0.5))
    NB.record("c", {"x": np.array([1, 2]), "ok": np.bool_(True), "n": np.int64(3)})
    NB.record("a", (2, 3.5))  # a name recorded again is replaced
    assert json.loads(path.read_text()) == {"a": [2, 3.5], "b": 0.5,
                                            "c": {"x": [1, 2], "ok": True, "n": 3}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["figures.json"]  # no temp left


def test_notebooks_record_what_the_collector_needs():
    for prefix, names in NF.REQUIRED.items():
        (path,) = NF.find_notebooks([prefix])
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "from _nb import quick_mode, record" in code, path.name
        for name in names:
            # a literal name, or the f-string that records seconds_plain / seconds_penalised
            assert f'record("{name}"' in code or (
                name.startswith("seconds_") and "record(f\"seconds_{" in code), (path.name, name)
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


FIG03 = {"sizes": {"n_train": 1536, "epochs": 3, "n_test": 600},
         "accuracy_plain": {"marker = class": 0.99, "no marker": 0.538,
                            "marker = wrong class": 0.34},
         "accuracy_penalised": {"marker = class": 0.9, "no marker": 0.675,
                                "marker = wrong class": 0.6667},
         "marker_share": {"plain": 0.089, "penalised": 0.0021},
         "seconds_plain": 50.0, "seconds_penalised": 120.0}
FIG04 = {"sizes": {"n_images": 8, "steps": 300}, "seconds_attack": 99.0,
         "report": {"L_inf of perturbation (x 255)": 8.0, "map MSE to target: before": 0.0362,
                    "map MSE to target: after": 0.0207, "map corr. to target: before": 0.1,
                    "map corr. to target: after": 0.5, "max |softmax change|": 0.0043,
                    "prediction kept": True}}


def _info() -> dict:
    return {"date_utc": "2026-12-01T00:00:00+00:00", "cpu_count": 2, "cpu": "x86_64",
            "platform": "cpu", "devices": 1, "loadavg": [1.0, 1.0, 1.0],
            "loadavg_end": [1.0, 1.0, 1.0],
            "versions": {k: "0" for k in ("jax", "flax", "torch", "captum", "grad-cam",
                                          "quantus")}}


def test_build_results_headlines_errors_and_missing():
    runs = [
        {"notebook": "03_right.ipynb", "wall_s": 300.0, "error": None, "figures": FIG03},
        {"notebook": "04_manip.ipynb", "wall_s": 200.0, "error": None, "figures": FIG04},
        {"notebook": "04_broken.ipynb", "wall_s": 5.0, "error": "CellExecutionError: boom",
         "figures": {"sizes": {"n_images": 2, "steps": 60}}},
    ]
    figures, md = NF.build_results(runs, _info(), quick=False, command="python x.py")
    assert figures["mode"] == "full"
    nbs = figures["notebooks"]
    assert nbs["03_right.ipynb"]["headline"] == (
        "wrong-class markers: 0.340 -> 0.667; no marker: 0.538 -> 0.675 (plain -> "
        "penalised); marker share of the hybrid map 0.089 -> 0.0021")
    assert "map MSE to the target 0.0362 -> 0.0207 (ratio 0.57)" in nbs["04_manip.ipynb"][
        "headline"]
    assert "max |softmax change| 0.0043" in nbs["04_manip.ipynb"]["headline"]
    broken = nbs["04_broken.ipynb"]
    assert broken["headline"] is None and broken["missing"] == ["report", "seconds_attack"]
    assert nbs["03_right.ipynb"]["missing"] == []
    assert "**The notebook failed**" in md and "boom" in md
    assert "| accuracy_penalised / no marker | 0.675 |" in md
    json.dumps(figures)  # serialisable as it is


def test_find_notebooks(tmp_path):
    assert [p.name[:3] for p in NF.find_notebooks(["04", "03"])] == ["04_", "03_"]
    with pytest.raises(SystemExit):
        NF.find_notebooks(["0"])  # several match
    fake = tmp_path / "x.ipynb"
    fake.write_text("{}")
    assert NF.find_notebooks([str(fake)]) == [fake.resolve()]


def test_script_runs_a_fake_notebook(tmp_path):  # starts a Jupyter kernel: ~3 s
    """The script runs a notebook in a kernel, keeps the figures recorded before a failed
    cell, reports the error and exits 1."""
    import nbformat

    (tmp_path / "_nb.py").write_text((ROOT / "notebooks" / "_nb.py").read_text())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from _nb import quick_mode, record\n"
                                          "record('quick', quick_mode())\n"
                                          "record('x', {'y': 1.5})"),
                nbformat.v4.new_code_cell("raise RuntimeError('claim failed')"),
                nbformat.v4.new_code_cell("record('never', 1)")]
    nbformat.write(nb, tmp_path / "99_fake.ipynb")
    env = dict(os.environ, JAXLRP_BENCH_RESULTS=str(tmp_path / "res"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "notebook_figures.py"),
                           "--quick", "--notebooks", str(tmp_path / "99_fake.ipynb")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the failed cell is reported
    res = json.loads((tmp_path / "res" / "notebook_figures_quick.json").read_text())
    run = res["notebooks"]["99_fake.ipynb"]
    assert run["figures"] == {"quick": True, "x": {"y": 1.5}}
    assert "claim failed" in run["error"] and run["wall_s"] > 0
    assert (tmp_path / "res" / "notebook_figures_quick.md").is_file()
