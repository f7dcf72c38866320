"""The evaluation driver: :func:`evaluate` explainers with a metric suite over a dataset.

:func:`evaluate` computes each explainer's maps once per batch, scores them with every
metric (per example), and returns a :class:`~jaxlrp.evaluation.results.Results` table of
mean and standard error per explainer x metric, with the raw per-example scores. With
``out_dir`` it writes each finished batch to disk (atomically, :mod:`.storage`) so that an
interrupted run resumes where it stopped, and finally ``results.json``, ``results.md`` and
a bar chart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlrp import _cache
from jaxlrp._tracing import LinenModel, apply_checked, as_adapter
from jaxlrp.errors import ExplanationError
from jaxlrp.evaluation.inputs import (
    Explainer,
    _as_batches,
    _check_batch,
    _resolve_explainers,
    _resolve_metrics,
)
from jaxlrp.evaluation.results import MetricInfo, Results, _error_text, _report
from jaxlrp.evaluation.storage import (
    _batch_path,
    _digest,
    _load_batch,
    _model_digest,
    _prepare_out,
    _save_batch,
)

DEFAULT_EXPLAINERS = ("gradcam", "gradcam++", "lrp", "hybrid")

def _jitted(fn: Explainer, model: Any) -> Explainer:
    """Jit an explainer when the model is a pytree (NNX module or LinenModel); the compiled
    function is cached in ``jaxlrp._cache.EVAL_JIT``, keyed weakly on ``fn``."""
    if not isinstance(model, (nnx.Module, LinenModel)):
        return fn
    key = _cache.key_part(fn)

    def jfn(m: Any, x: jax.Array, t: Any) -> jax.Array:
        return _cache.jit_call(_cache.EVAL_JIT, key, _call, (fn,), (m, x, t))

    return jfn


def _call(fn: Explainer, model: Any, x: jax.Array, t: Any) -> jax.Array:
    return fn(model, x, t)


def _run_batch(model, adapter, forward, explain_fns, jit_fns, metrics, images, labels, masks,
               batch_key, target) -> dict:
    """Scores (E, M, b) for one validated batch; failures recorded, never raised."""
    b = images.shape[0]
    scores = np.full((len(explain_fns), len(metrics), b), np.nan)
    failures: list[dict] = []
    skipped: dict[str, str] = {}
    x = jnp.asarray(images)
    try:
        apply_checked(adapter, x, "images")
        logits = np.asarray(forward(adapter.params, x))
        num_classes = logits.shape[-1]
        if (labels < 0).any() or (labels >= num_classes).any():
            raise ExplanationError(
                f"labels: expected class indices in [0, {num_classes}), got values in "
                f"[{labels.min()}, {labels.max()}]"
            )
        if isinstance(target, int) and not 0 <= target < num_classes:
            raise ExplanationError(
                f"target: expected a class in [0, {num_classes}), got {target}")
        t = (labels if target == "label" else logits.argmax(-1).astype(np.int32)
             if target == "predicted" else np.full((b,), target, np.int32))
    except Exception as e:  # the batch itself is bad: nothing can be computed on it
        return {"scores": scores, "targets": np.full((b,), -1, np.int64),
                "failures": [{"explainer": None, "metric": None, "error": _error_text(e)}],
                "skipped": {}}
    tj = jnp.asarray(t)
    for i, (name, fn) in enumerate(explain_fns.items()):
        try:
            maps = jit_fns[name](model, x, tj)
            if not bool(jnp.isfinite(maps).all()):
                raise ExplanationError(f"explainer {name!r} returned NaN or Inf maps")
        except Exception as e:
            failures.append({"explainer": name, "metric": None, "error": _error_text(e)})
            continue
        for j, m in enumerate(metrics):
            if m.needs_masks and masks is None:
                skipped[m.name] = "the data has no ground-truth masks"
                continue
            key = jax.random.fold_in(batch_key, j)  # same draws for every explainer
            try:
                s = m.fn(model, x, tj, maps, explain=fn if m.needs_explainer else None,
                         masks=None if masks is None else jnp.asarray(masks), key=key)
                s = np.asarray(s, np.float64)
                if s.shape != (b,):
                    raise ExplanationError(f"metric returned shape {s.shape}, expected ({b},)")
                scores[i, j] = s
            except Exception as e:
                failures.append({"explainer": name, "metric": m.name, "error": _error_text(e)})
    return {"scores": scores, "targets": np.asarray(t, np.int64), "failures": failures,
            "skipped": skipped}


def evaluate(
    model: Any,
    data: Any,
    explainers: Mapping[str, Explainer] | Sequence[str] = DEFAULT_EXPLAINERS,
    metrics: Sequence[Any] | None = None,
    *,
    target: str | int = "label",
    batch_size: int = 32,
    key: int | jax.Array = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    chart: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> Results:
    """Score explainers with metrics over a dataset.

    Args:
      model: an NNX module, ``(linen_module, variables)`` or ``jaxlrp.linen(...)``.
      data: a :class:`jaxlrp.data.Dataset` or an iterable of ``(images, labels, masks)``
        batches (images (b, H, W, C) float, labels (b,) int, masks (b, H, W) bool or None).
      explainers: names from :data:`jaxlrp.explainers.NAMES`, or a dict name ->
        ``explain(model, x, target) -> (B, H, W)`` or ``(B, H, W, C)``.
      metrics: :class:`jaxlrp.metrics.Metric` objects or the names of registered metrics
        (:func:`jaxlrp.metrics.names`);
        None: :func:`jaxlrp.metrics.default_suite`. Metrics needing masks are skipped (with
        a notice) for batches without masks.
      target: ``"label"`` (explain the true class), ``"predicted"`` (the model's argmax)
        or an int (that class for every example): the explainers' spellings plus
        ``"label"`` (see :mod:`jaxlrp.typing`).
      batch_size: examples per batch when ``data`` is a Dataset.
      key: int seed or ``jax.random`` key. Batch ``i``, metric ``j`` gets
        ``fold_in(fold_in(key, i), j)``: the same draws for every explainer, independent of
        interruptions. (The draws have the batch's shape, so scores depend on batch_size.)
      out_dir: folder for per-batch files (``batches/``), ``run.json``, ``results.json``,
        ``results.md`` and ``results.png``; None keeps everything in memory.
      resume: with ``out_dir``, reuse finished batch files of the same configuration
        (explainers, metrics, target, batch size, key and a digest of the model's
        parameters; another configuration raises) and data (each file carries a digest of
        its batch; changed batches are recomputed); False deletes them first.
      progress: show a tqdm progress bar over batches.
      chart: write the bar chart (needs matplotlib) when ``out_dir`` is given.
      meta: extra description stored in ``Results.meta``.

    Returns:
      :class:`Results`. A bad batch (NaN images, wrong shape...) or a failing explainer or
      metric is reported on stderr, recorded in ``Results.failures`` and left NaN; the run
      goes on. Raises :class:`ExplanationError` when every batch failed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
            batch_size < 1):
        raise ExplanationError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if not (target in ("label", "predicted") or (
            isinstance(target, (int, np.integer)) and not isinstance(target, bool))):
        raise ExplanationError(
            f"target: expected 'label', 'predicted' or an int class, got {target!r}")
    target = target if isinstance(target, str) else int(target)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        root = jax.random.key(int(key))
        key_desc: Any = int(key)
    elif hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        root = key
        key_desc = np.asarray(jax.random.key_data(key)).tolist()
    else:
        raise ExplanationError(f"key: expected an int seed or a jax.random.key, got {key!r}")
    explain_fns = _resolve_explainers(explainers)
    suite = _resolve_metrics(metrics)
    adapter = as_adapter(model)
    forward = jax.jit(adapter.apply)
    batches, n_total, n_batches = _as_batches(data, int(batch_size))

    out = Path(out_dir) if out_dir is not None else None
    config = {"explainers": list(explain_fns), "metrics": [m.name for m in suite],
              "target": target, "batch_size": int(batch_size), "key": key_desc,
              "model": _model_digest(adapter)}
    if out is not None:
        _prepare_out(out, config, resume)

    jit_fns = {name: _jitted(fn, model) for name, fn in explain_fns.items()}
    records: list[dict] = []
    resumed: list[int] = []
    computed: list[int] = []
    start, t0 = 0, time.perf_counter()
    bar = _progress(batches, n_batches, progress)
    notices: set[str] = set()
    for index, raw in enumerate(bar):
        size = _batch_len(raw)
        try:
            images, labels, masks = _check_batch(raw, index)
            digest = _digest(images, labels, masks)
        except ExplanationError as e:
            rec = _failed(index, start, size, e)
            _report(f"batch {index} failed: {_error_text(e)}")
            records.append(rec)
            start += size
            continue
        path = _batch_path(out, index) if out is not None else None
        rec = _load_batch(path) if (path is not None and path.is_file()) else None
        if rec is not None and rec.get("digest") == digest and rec["scores"].shape == (
                len(explain_fns), len(suite), size):
            resumed.append(index)
        else:
            rec = _run_batch(model, adapter, forward, explain_fns, jit_fns, suite, images,
                             labels, masks, jax.random.fold_in(root, index), target)
            rec.update(digest=digest, start=start, size=size)
            for f in rec["failures"]:
                f.update(batch=index, start=start, size=size)
                _report(f"batch {index} failed"
                        f"{' for ' + f['explainer'] if f['explainer'] else ''}"
                        f"{'/' + f['metric'] if f['metric'] else ''}: {f['error']}")
            if path is not None:
                _save_batch(path, rec)
            computed.append(index)
        for name, why in rec["skipped"].items():
            if name not in notices:
                notices.add(name)
                _report(f"skipping {name}: {why}")
        records.append(rec)
        start += size
    if hasattr(bar, "close"):
        bar.close()
    if not records:
        raise ExplanationError("data: no batches")
    if all(r["failures"] and r["failures"][0]["explainer"] is None for r in records):
        raise ExplanationError(f"data: every batch failed; first error: "
                               f"{records[0]['failures'][0]['error']}")

    results = _assemble(explain_fns, suite, records)
    results.meta.update({
        "config": config, "num_batches": len(records), "computed_batches": computed,
        "resumed_batches": resumed, "seconds": round(time.perf_counter() - t0, 2),
        "jax_backend": jax.default_backend(),
    })
    if n_total is not None:
        results.meta["num_examples"] = n_total
    if meta:
        results.meta.update(dict(meta))
    if out is not None:
        results.save(out, chart=chart)
    return results


def _batch_len(raw: Any) -> int:
    try:
        return int(np.shape(raw[0])[0])
    except Exception:
        return 0


def _failed(index: int, start: int, size: int, e: BaseException) -> dict:
    return {"scores": None, "targets": np.full((size,), -1, np.int64), "start": start,
            "size": size, "skipped": {},
            "failures": [{"batch": index, "start": start, "size": size, "explainer": None,
                          "metric": None, "error": _error_text(e)}]}


def _assemble(explain_fns: Mapping, suite: Sequence, records: list[dict]) -> Results:
    e_names, m_names = list(explain_fns), [m.name for m in suite]
    parts = []
    for r in records:
        s = r["scores"]
        parts.append(np.full((len(e_names), len(m_names), r["size"]), np.nan) if s is None else s)
    allscores = np.concatenate(parts, axis=2) if parts else np.zeros((len(e_names),
                                                                       len(m_names), 0))
    skipped: dict[str, str] = {}
    for r in records:
        skipped.update(r["skipped"])
    # a metric that was skipped everywhere is dropped from the table
    keep = [j for j, m in enumerate(m_names)
            if not (m in skipped and np.isnan(allscores[:, j]).all())]
    scores = {e: {m_names[j]: allscores[i, j] for j in keep} for i, e in enumerate(e_names)}
    metrics = tuple(MetricInfo(suite[j].name, suite[j].category, suite[j].higher_is_better)
                    for j in keep)
    targets = np.concatenate([r["targets"] for r in records])
    failures = [f for r in records for f in r["failures"]]
    return Results(tuple(e_names), metrics, scores, targets, failures, skipped, {})


def _progress(batches: Iterable, total: int | None, progress: bool) -> Iterable:
    if not progress:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc="evaluate", unit="batch")


__all__ = ["DEFAULT_EXPLAINERS", "evaluate"]
