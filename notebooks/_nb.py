"""Scaffolding shared by the example notebooks (not part of the jaxlrp library).

The test suite (``tests/test_notebooks.py``) runs every notebook with
``JAXLRP_NOTEBOOK_QUICK=1``: reduced sizes, so that all four finish in minutes on a CPU.

``benchmarks/notebook_figures.py`` runs them with ``JAXLRP_NOTEBOOK_FIGURES=<file.json>``:
each :func:`record` call then adds one headline figure to that file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FIGURES_ENV = "JAXLRP_NOTEBOOK_FIGURES"


def quick_mode() -> bool:
    """True when ``JAXLRP_NOTEBOOK_QUICK`` is set to a non-empty value other than ``0``."""
    return os.environ.get("JAXLRP_NOTEBOOK_QUICK", "") not in ("", "0")


def _plain(value: Any) -> Any:
    """``value`` with NumPy / JAX scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy / JAX scalars and arrays
        return _plain(value.tolist())
    return value


def record(name: str, value: Any) -> None:
    """Store ``value`` under ``name`` in the JSON file named by ``JAXLRP_NOTEBOOK_FIGURES``.

    Nothing happens when the variable is unset or empty. Figures recorded before (by
    this or an earlier cell) are kept; recording a name again replaces its value.
    """
    target = os.environ.get(FIGURES_ENV, "")
    if not target:
        return
    path = Path(target)
    figures: dict[str, Any] = {}
    if path.is_file() and path.stat().st_size:
        figures = json.loads(path.read_text(encoding="utf-8"))
    figures[name] = _plain(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(figures, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def kernel_name() -> str:
    """A Jupyter kernel running this interpreter (installs the venv's kernelspec if
    missing): the kernel ``tests/test_notebooks.py`` and ``benchmarks/notebook_figures.py``
    execute the notebooks in."""
    import sys
    from pathlib import Path

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        exe = spec.argv[0]
        if exe in ("python", "python3") or Path(exe).resolve() == Path(sys.executable).resolve():
            return "python3"
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(prefix=sys.prefix, kernel_name="python3")
    return "python3"
