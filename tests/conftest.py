"""Shared pytest configuration.

The crosscheck suite (tests/crosscheck) needs the ``crosscheck`` extra (torch and
the peers). Without torch it is not collected; with it, run ``pytest -m crosscheck``.
"""

import importlib.util
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

collect_ignore_glob = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob.append("crosscheck/*")
