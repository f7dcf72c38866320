"""Run the example notebooks and collect the headline figures that the README quotes.

Each notebook runs top to bottom in a fresh Jupyter kernel (``nbclient``, as
``tests/test_notebooks.py`` runs them), with ``JAXLRP_NOTEBOOK_FIGURES`` naming a scratch
JSON file: the notebook's ``_nb.record(name, value)`` calls (``notebooks/_nb.py``) write
its figures there, where they are computed. This script gathers them, with each
notebook's wall time, into ``results/notebook_figures_{quick,full}.json`` and ``.md``
(machine facts and load averages as the other benchmarks; ``JAXLRP_BENCH_RESULTS``
redirects them). A notebook that fails (an error or a failed claim in a cell) is
reported with the figures it recorded before failing, and the script exits 1.

* notebook 03 (right for the right reasons): accuracy of the plain and the penalised
  model on each test set (marker = class, no marker, marker = wrong class), the marker's
  share of the hybrid map, training seconds;
* notebook 04 (manipulating explanations): map MSE / correlation to the target before
  and after the attack, max |softmax change|, L_inf of the perturbation, attack seconds.

Usage::

    python benchmarks/notebook_figures.py --quick            # quick mode (the tests' sizes)
    python benchmarks/notebook_figures.py                    # full run (the README's)
    python benchmarks/notebook_figures.py --notebooks 03     # one notebook
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
from _nb import kernel_name  # noqa: E402  (the kernel tests/test_notebooks.py uses too)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
FIGURES_ENV = "JAXLRP_NOTEBOOK_FIGURES"  # = notebooks/_nb.py's FIGURES_ENV
#: the names each notebook must record for its headline (tests check the notebooks)
REQUIRED = {
    "03": ("sizes", "accuracy_plain", "accuracy_penalised", "marker_share",
           "seconds_plain", "seconds_penalised"),
    "04": ("sizes", "report", "seconds_attack"),
}


def find_notebooks(specs: list[str]) -> list[Path]:
    """Notebooks named by a number prefix (``03``) or a path to an ``.ipynb`` file."""
    paths = []
    for spec in specs:
        if spec.endswith(".ipynb"):
            p = Path(spec)
            if not p.is_file():
                raise SystemExit(f"--notebooks: {spec} does not exist")
            paths.append(p.resolve())
            continue
        hits = sorted(NOTEBOOK_DIR.glob(f"{spec}*.ipynb"))
        if len(hits) != 1:
            raise SystemExit(f"--notebooks: {spec!r} names {len(hits)} notebooks in notebooks/")
        paths.append(hits[0])
    return paths


@contextlib.contextmanager
def environ(**updates: str) -> Iterator[None]:
    """Set environment variables (the kernel inherits them) and restore them after."""
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(path: Path, quick: bool, timeout: int) -> dict:
    """Execute one notebook in a fresh kernel; its wall time, error (or None), figures."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        fig_file = Path(scratch) / "figures.json"
        client = nbclient.NotebookClient(
            nb, kernel_name=kernel_name(), timeout=timeout,
            resources={"metadata": {"path": str(path.parent)}})
        error = None
        start = time.perf_counter()
        with environ(JAXLRP_NOTEBOOK_QUICK="1" if quick else "0", MPLBACKEND="Agg",
                     **{FIGURES_ENV: str(fig_file)}):
            try:
                client.execute()
            except Exception as e:  # a failed cell, a dead kernel, a timeout
                error = f"{type(e).__name__}: {str(e)[-3000:]}"
        wall = time.perf_counter() - start
        figures = json.loads(fig_file.read_text(encoding="utf-8")) if fig_file.is_file() else {}
    return {"notebook": path.name, "wall_s": round(wall, 1), "error": error,
            "figures": figures}


def _key(name: str) -> str:
    return name[:2]


def headline(notebook: str, figures: dict) -> str | None:
    """The README's sentence for a notebook, from its recorded figures (None if missing)."""
    try:
        if _key(notebook) == "03":
            p, g, s = figures["accuracy_plain"], figures["accuracy_penalised"], \
                figures["marker_share"]
            w, n = "marker = wrong class", "no marker"
            return (f"wrong-class markers: {p[w]:.3f} -> {g[w]:.3f}; no marker: "
                    f"{p[n]:.3f} -> {g[n]:.3f} (plain -> penalised); marker share of the "
                    f"hybrid map {s['plain']:.3g} -> {s['penalised']:.3g}")
        if _key(notebook) == "04":
            r, sz = figures["report"], figures["sizes"]
            b, a = r["map MSE to target: before"], r["map MSE to target: after"]
            return (f"map MSE to the target {b:.3g} -> {a:.3g} (ratio {a / b:.2f}), max "
                    f"|softmax change| {r['max |softmax change|']:.2g}, prediction kept: "
                    f"{r['prediction kept']}, L_inf x 255 = "
                    f"{r['L_inf of perturbation (x 255)']:.3g} ({sz['n_images']} images, "
                    f"{sz['steps']} steps)")
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return None


def _flat(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k} / ")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def build_results(runs: list[dict], info: dict, quick: bool, command: str) -> tuple[dict, str]:
    """(the JSON object, the Markdown) of one run of this script."""
    mode = "quick" if quick else "full"
    for r in runs:
        r["headline"] = headline(r["notebook"], r["figures"])
        need = REQUIRED.get(_key(r["notebook"]), ())
        r["missing"] = [k for k in need if k not in r["figures"]]
    figures = {"machine": info, "mode": mode, "command": command,
               "notebooks": {r["notebook"]: r for r in runs}}
    md = [f"# notebook_figures ({mode} run)", "", U.machine_md(info), "",
          f"Command: `{command}`. Each notebook ran in a fresh kernel with "
          f"`JAXLRP_NOTEBOOK_QUICK={'1' if quick else '0'}`; its figures are those its "
          "`_nb.record` calls wrote.", ""]
    md += [U.table([[r["notebook"], r["wall_s"], "error" if r["error"] else "ok"]
                    for r in runs], ["notebook", "wall s", "status"]), ""]
    for r in runs:
        md += [f"## {r['notebook']}", ""]
        if r["headline"]:
            md += [f"Headline: {r['headline']}.", ""]
        if r["error"]:
            md += ["**The notebook failed**; figures below are those recorded before the "
                   "failure:", "", "```", r["error"].strip()[-1500:], "```", ""]
        if r["missing"]:
            md += [f"Not recorded: {', '.join(r['missing'])}.", ""]
        if r["figures"]:
            md += [U.table([[k, v] for k, v in _flat(r["figures"])], ["figure", "value"]), ""]
    return figures, "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Execute the example notebooks (default: 03 and 04, full run) and "
        "write their headline figures and wall times to results/notebook_figures_"
        "{quick,full}.json/.md (JAXLRP_BENCH_RESULTS redirects them).")
    ap.add_argument("--quick", action="store_true",
                    help="quick mode (JAXLRP_NOTEBOOK_QUICK=1: the test suite's sizes); "
                    "default: the full run")
    ap.add_argument("--notebooks", nargs="+", default=["03", "04"],
                    help="number prefixes in notebooks/ (01 .. 04) or .ipynb paths")
    ap.add_argument("--timeout", type=int, default=None,
                    help="seconds per cell (default 900 quick, 7200 full)")
    ap.add_argument("--name", default=None,
                    help="results file name (default notebook_figures_{quick,full})")
    args = ap.parse_args(argv)
    paths = find_notebooks(args.notebooks)
    timeout = args.timeout or (900 if args.quick else 7200)
    name = args.name or f"notebook_figures_{'quick' if args.quick else 'full'}"
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}", flush=True)
    runs = []
    for path in paths:
        print(f"{path.name} ({'quick' if args.quick else 'full'}) ...", flush=True)
        r = run_notebook(path, args.quick, timeout)
        print(f"  {r['wall_s']:.0f} s, {'FAILED' if r['error'] else 'ok'}", flush=True)
        runs.append(r)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    command = "python benchmarks/notebook_figures.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    figures, md = build_results(runs, info, args.quick, command.strip())
    out = U.write_results(name, figures, md)
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}; wrote {out}")
    for r in runs:
        print(f"{r['notebook']}: {r['headline'] or '(no headline)'}"
              + (f"\n  ERROR {r['error'][-500:]}" if r["error"] else ""))
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
