"""Validation of :func:`jaxlrp.evaluation.evaluate`'s inputs: explainers, metrics, batches."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxlrp import _cache
from jaxlrp.errors import ExplanationError
from jaxlrp.typing import Explainer


def _resolve_explainers(explainers: Any) -> dict[str, Explainer]:
    if isinstance(explainers, str):
        explainers = [explainers]
    if isinstance(explainers, Mapping):
        out = dict(explainers)
        for name, fn in out.items():
            if not isinstance(name, str) or not callable(fn):
                raise ExplanationError(
                    "explainers: expected a dict of name -> explain(model, x, target), got "
                    f"{name!r}: {type(fn).__name__}"
                )
    elif isinstance(explainers, Iterable):
        from jaxlrp import explainers as registry

        names = list(explainers)
        out = {}
        for name in names:
            if not isinstance(name, str):
                raise ExplanationError(
                    f"explainers: expected explainer names (str), got {type(name).__name__}"
                )
            # one object per name, so metric jits reuse it (jaxlrp._cache.NAMED)
            out[name] = _cache.NAMED.get(name, functools.partial(registry.get, name))
    else:
        raise ExplanationError(
            "explainers: expected a list of names or a dict name -> explain function, got "
            f"{type(explainers).__name__}"
        )
    if not out:
        raise ExplanationError("explainers: expected at least one explainer, got none")
    return out


def _resolve_metrics(metrics: Any) -> tuple:
    from jaxlrp.metrics import METRICS, Metric, default_suite

    if metrics is None:
        return tuple(default_suite())
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    out = []
    for m in metrics:
        if isinstance(m, str):
            m = METRICS.get(m)  # any registered metric, by name or alias
        if not isinstance(m, Metric):
            raise ExplanationError(
                f"metrics: expected jaxlrp.metrics.Metric objects or names, got {type(m).__name__}"
            )
        out.append(m)
    names = [m.name for m in out]
    if len(set(names)) != len(names) or not out:
        raise ExplanationError(f"metrics: expected distinct metric names, got {names}")
    return tuple(out)


def _check_batch(batch: Any, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate one (images, labels, masks) batch; raise ExplanationError when bad."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ExplanationError(
            f"data: batch {index}: expected a tuple (images, labels, masks), got "
            f"{type(batch).__name__}"
        )
    images, labels = np.asarray(batch[0]), np.asarray(batch[1])
    masks = None if len(batch) == 2 or batch[2] is None else np.asarray(batch[2])
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating) or images.shape[0] == 0:
        raise ExplanationError(
            f"images: batch {index}: expected a non-empty float array (B, H, W, C), got "
            f"shape {images.shape} dtype {images.dtype}"
        )
    bad = np.flatnonzero(~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1))
    if bad.size:
        raise ExplanationError(
            f"images: batch {index}: example(s) {bad[:10].tolist()} contain NaN or Inf; "
            "expected finite images"
        )
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ExplanationError(
            f"labels: batch {index}: expected ({images.shape[0]},) integers, got shape "
            f"{labels.shape} dtype {labels.dtype}"
        )
    if masks is not None and masks.shape[:3] != images.shape[:3]:
        raise ExplanationError(
            f"masks: batch {index}: expected shape {images.shape[:3]}, got {masks.shape}"
        )
    return images, labels.astype(np.int32), masks


def _as_batches(data: Any, batch_size: int) -> tuple[Iterable, int | None, int | None]:
    from jaxlrp.data import Dataset

    if isinstance(data, Dataset):
        n = len(data)
        return data.batches(batch_size), n, math.ceil(n / batch_size)
    if isinstance(data, (tuple,)) and len(data) in (2, 3) and hasattr(data[0], "ndim") and (
            np.ndim(data[0]) == 4):
        raise ExplanationError(
            "data: got one (images, labels, masks) tuple; pass a jaxlrp.data.Dataset or a list "
            "of such batches"
        )
    if isinstance(data, Iterable):
        total = len(data) if hasattr(data, "__len__") else None
        return data, None, total
    raise ExplanationError(
        "data: expected a jaxlrp.data.Dataset or an iterable of (images, labels, masks) "
        f"batches, got {type(data).__name__}"
    )
