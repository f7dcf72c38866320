"""Traced explainers kept on disk between command-line runs (``jax.export``).

The persistent compilation cache (:mod:`jaxlrp.compilation_cache`) spares a new process
XLA's compilation, not the tracing of the model in Python and its lowering, about 1.2 s
of a 5 s ``jaxlrp explain`` with EfficientNet-Lite0. So the command line also keeps the
traced program (``jax.export``'s serialized StableHLO) in a subfolder of the compilation
cache, under a key made of everything the trace depends on:

* jaxlrp's own source (every ``.py`` file of the package) and the versions of Python,
  jax, jaxlib and flax;
* the backend, its device kind, ``XLA_FLAGS`` and the x64 and matmul-precision settings;
* the model's structure (its NNX graph definition, with every static attribute) and the
  shapes and dtypes of its state, not its values, which are arguments of the program;
* the plan (method, target, options) and the batch's shape and dtype.

A later run with the same key calls the saved program: its compiled form comes from the
compilation cache and no Python tracing is left. The command line's models are all
jaxlrp's own classes, so their code is part of the key. Off whenever the compilation
cache is off (``--no-compilation-cache``, ``JAXLRP_NO_COMPILATION_CACHE``). A model that
is not an NNX module, or whose program cannot be exported or read back, runs through
``jax.jit`` as before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from jaxlrp._atomic import atomic_write

#: bump when the key or the saved file's layout changes
FORMAT = 1
SUBFOLDER = "jaxlrp-exported"
SUFFIX = ".jaxexport"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of every ``.py`` file of the installed jaxlrp package (path and content)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _versions() -> dict:
    import flax
    import jaxlib

    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": getattr(jaxlib, "__version__", "?"), "flax": flax.__version__}


def program_key(plan: Any, graphdef: Any, leaves: list, x: Any) -> str:
    """The hex key of one traced program (see the module docstring)."""
    dev = jax.devices()[0]
    parts = {
        "format": FORMAT,
        "source": source_digest(),
        "versions": _versions(),
        "backend": [jax.default_backend(), dev.device_kind, os.environ.get("XLA_FLAGS", ""),
                    bool(jax.config.jax_enable_x64),
                    str(jax.config.jax_default_matmul_precision)],
        "plan": repr(plan),
        "state": [[list(v.shape), str(v.dtype)] for v in leaves],
        "x": [list(x.shape), str(x.dtype)],
    }
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    # static attributes that are functions print with their address: drop it
    h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(graphdef)).encode())
    return h.hexdigest()


def active_folder() -> Path | None:
    """``<compilation cache>/jaxlrp-exported``, or None when the compilation cache is off."""
    folder = jax.config.jax_compilation_cache_dir
    return Path(folder) / SUBFOLDER if folder else None


class SavedRunner:
    """``runner(model, x) -> run(model, x)``, through a saved program when it can.

    Args:
      run: the pure function ``run(model, x)`` (not jitted).
      plan: anything whose ``repr`` names the options the trace depends on.
      folder: where programs are kept; default :func:`active_folder` at each call (None:
        plain ``jax.jit(run)``).
    """

    def __init__(self, run: Callable[[Any, Any], Any], plan: Any,
                 folder: Path | None | str = "active"):
        self.run = run
        self.jitted = jax.jit(run)
        self.plan = plan
        self.folder = folder
        self.programs: dict[str, Any] = {}  # key -> Exported, or None (fall back to jit)
        self.events: list[tuple[str, str]] = []  # (what happened, key), for tests and debug

    def _folder(self) -> Path | None:
        return active_folder() if self.folder == "active" else (
            Path(self.folder) if self.folder is not None else None)

    def __call__(self, model: Any, x: Any) -> Any:
        from flax import nnx

        folder = self._folder()
        if folder is None or not isinstance(model, nnx.Module):
            return self.jitted(model, x)
        graphdef, state = nnx.split(model)
        leaves, treedef = jax.tree.flatten(state)
        x = jax.numpy.asarray(x) if not hasattr(x, "dtype") else x
        key = program_key(self.plan, graphdef, leaves, x)
        if key not in self.programs:
            self.programs[key] = self._load(folder, key, leaves, x) or self._export(
                folder, key, graphdef, treedef, leaves, x)
        program = self.programs[key]
        if program is None:
            return self.jitted(model, x)
        return program.call(leaves, x)

    def _load(self, folder: Path, key: str, leaves: list, x: Any) -> Any:
        path = folder / f"{key}{SUFFIX}"
        if not path.is_file():
            return None
        try:
            program = jax.export.deserialize(bytearray(path.read_bytes()))
            if [(tuple(a.shape), a.dtype) for a in program.in_avals] != [
                    (tuple(v.shape), v.dtype) for v in [*leaves, x]]:
                raise ValueError("saved program's inputs differ")
        except Exception:  # noqa: BLE001 - unreadable or stale: trace again, overwrite it
            self.events.append(("unreadable", key))
            path.unlink(missing_ok=True)
            return None
        self.events.append(("loaded", key))
        return program

    def _export(self, folder: Path, key: str, graphdef: Any, treedef: Any, leaves: list,
                x: Any) -> Any:
        from flax import nnx

        run = self.run

        def program(lv: list, xx: Any) -> Any:
            return run(nnx.merge(graphdef, jax.tree.unflatten(treedef, lv)), xx)

        try:
            exported = jax.export.export(jax.jit(program))(
                [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves],
                jax.ShapeDtypeStruct(x.shape, x.dtype))
            blob = bytes(exported.serialize())
        except Exception:  # noqa: BLE001 - e.g. a callback or a type export cannot save
            self.events.append(("not exportable", key))
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / f"{key}{SUFFIX}", blob)
            self.events.append(("saved", key))
        except OSError:  # a read-only cache: this process still uses the program
            self.events.append(("not saved", key))
        return exported


__all__ = ["SavedRunner", "active_folder", "program_key", "source_digest"]
