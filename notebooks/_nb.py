"""Scaffolding shared by the example notebooks (not part of the jaxlrp library).

The test suite (``tests/test_notebooks.py``) runs every notebook with
``JAXLRP_NOTEBOOK_QUICK=1``: reduced sizes, so that all four finish in minutes on a CPU.
"""

from __future__ import annotations

import os


def quick_mode() -> bool:
    """True when ``JAXLRP_NOTEBOOK_QUICK`` is set to a non-empty value other than ``0``."""
    return os.environ.get("JAXLRP_NOTEBOOK_QUICK", "") not in ("", "0")
