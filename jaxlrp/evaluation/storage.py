"""Resumable storage of an evaluation run: one atomic file per finished batch.

``out_dir/run.json`` holds the run's configuration; ``out_dir/batches/batch_NNNNNN.npz``
holds one batch's scores with a digest of its data, so that a rerun of the same
configuration reuses finished batches and recomputes changed ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlrp._atomic import atomic_write
from jaxlrp.errors import ExplanationError

_BATCH_DIR = "batches"
_MANIFEST = "run.json"


def _batch_path(out: Path, index: int) -> Path:
    return out / _BATCH_DIR / f"batch_{index:06d}.npz"


def _save_batch(path: Path, record: dict) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, scores=record["scores"], targets=record["targets"],
             info=np.asarray(json.dumps({k: record[k] for k in ("digest", "start", "size",
                                                                  "failures", "skipped")})))
    atomic_write(path, buf.getvalue())


def _load_batch(path: Path) -> dict | None:
    try:
        with np.load(path) as z:
            rec = json.loads(str(z["info"]))
            rec["scores"] = np.asarray(z["scores"], np.float64)
            rec["targets"] = np.asarray(z["targets"], np.int64)
        return rec
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # unreadable (should not happen with atomic writes): recompute


def _digest(images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in (images, labels, masks):
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _model_digest(adapter: Any) -> str:
    """sha256 of the model's parameter values and structure (resume must not mix models)."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(adapter.params)
    h.update(str(treedef).encode())
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _prepare_out(out: Path, config: dict, resume: bool) -> None:
    bdir = out / _BATCH_DIR
    manifest = out / _MANIFEST
    if resume and manifest.is_file():
        old = json.loads(manifest.read_text())
        if old != config:
            raise ExplanationError(
                f"out_dir: {str(out)!r} holds a run with another configuration ({old}); pass "
                "resume=False to overwrite it, or another out_dir"
            )
    if bdir.is_dir():
        for p in bdir.iterdir():
            if p.name.endswith(".tmp") or (not resume and p.suffix == ".npz"):
                p.unlink()  # leftovers of an interrupted write / a fresh start
    bdir.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest, json.dumps(config, indent=1).encode())
