"""Shared pytest configuration.

The crosscheck suite (tests/crosscheck) needs the ``crosscheck`` extra (torch and
the peers). Without torch it is not collected; with it, run ``pytest -m crosscheck``.
"""

import importlib.util
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the CLI keeps compiled code on disk by default; tests that call it in-process must not
# switch the whole test process to the persistent cache
os.environ.setdefault("JAXLRP_NO_COMPILATION_CACHE", "1")

collect_ignore_glob = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob.append("crosscheck/*")
