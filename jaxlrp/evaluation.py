"""Evaluate explainers with a metric suite over a dataset: the evaluation driver.

:func:`evaluate` computes each explainer's maps once per batch, scores them with every
metric (per example), and returns a :class:`Results` table of mean and standard error
per explainer x metric, with the raw per-example scores. With ``out_dir`` it writes
each finished batch to disk (atomically) so that an interrupted run resumes where it
stopped, and finally ``results.json``, ``results.md`` and a bar chart.

:func:`add_cli_arguments` / :func:`run_cli` implement ``jaxlrp evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlrp.atomic import atomic_write
from jaxlrp.errors import ExplanationError
from jaxlrp.tracing import LinenModel, apply_checked, as_adapter
from jaxlrp.typing import Explainer

DEFAULT_EXPLAINERS = ("gradcam", "gradcam++", "lrp", "hybrid")
_BATCH_DIR = "batches"
_MANIFEST = "run.json"
_NAMED: dict[str, Any] = {}  # explainers resolved by name, reused across evaluate calls
_JITTED: dict[Any, Any] = {}  # jitted explainers, reused across evaluate calls


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """Name, category and direction of one metric in a :class:`Results` table."""

    name: str
    category: str
    higher_is_better: bool


@dataclasses.dataclass
class Results:
    """Per-example scores of each explainer under each metric, and their summary.

    Attributes:
      explainers: explainer names, in evaluation order.
      metrics: the metrics that were scored (:class:`MetricInfo`).
      scores: ``scores[explainer][metric]`` is an (N,) float64 array over all examples
        seen (NaN where the batch failed or the metric was not computed for it).
      targets: (N,) int classes explained (-1 for examples of failed batches).
      failures: one dict per failure: ``batch``, ``start``, ``size``, ``explainer`` and
        ``metric`` (None when the whole batch failed) and the ``error`` message.
      skipped: metric name -> why it was not computed (e.g. no masks).
      meta: free-form description of the run (model, data, timing, resumed batches).
    """

    explainers: tuple[str, ...]
    metrics: tuple[MetricInfo, ...]
    scores: dict[str, dict[str, np.ndarray]]
    targets: np.ndarray
    failures: list[dict] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    # --------------------------------------------------------------- summaries

    @property
    def num_examples(self) -> int:
        """N, the number of examples seen (including those of failed batches)."""
        return int(self.targets.shape[0])

    def _values(self, explainer: str, metric: str) -> np.ndarray:
        if explainer not in self.scores:
            raise ExplanationError(
                f"explainer: expected one of {list(self.explainers)}, got {explainer!r}"
            )
        if metric not in self.scores[explainer]:
            raise ExplanationError(
                f"metric: expected one of {[m.name for m in self.metrics]}, got {metric!r}"
            )
        v = np.asarray(self.scores[explainer][metric], np.float64)
        return v[np.isfinite(v)]

    def count(self, explainer: str, metric: str) -> int:
        """Number of examples with a finite score."""
        return int(self._values(explainer, metric).size)

    def mean(self, explainer: str, metric: str) -> float:
        """Mean of the finite per-example scores (NaN when there are none)."""
        v = self._values(explainer, metric)
        return float(v.mean()) if v.size else float("nan")

    def stderr(self, explainer: str, metric: str) -> float:
        """Standard error of the mean, std(ddof=1) / sqrt(n) (NaN for n < 2)."""
        v = self._values(explainer, metric)
        return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size >= 2 else float("nan")

    def table(self) -> dict[str, dict[str, tuple[float, float]]]:
        """``{explainer: {metric: (mean, stderr)}}`` over the computed metrics."""
        return {
            e: {m.name: (self.mean(e, m.name), self.stderr(e, m.name)) for m in self.metrics}
            for e in self.explainers
        }

    def categories(self) -> dict[str, str]:
        """``{metric: category}``."""
        return {m.name: m.category for m in self.metrics}

    def best(self, metric: str) -> str | None:
        """The explainer with the best mean under ``metric`` (its direction respected)."""
        info = {m.name: m for m in self.metrics}[metric]
        means = {e: self.mean(e, metric) for e in self.explainers}
        means = {e: v for e, v in means.items() if np.isfinite(v)}
        if not means:
            return None
        pick = max if info.higher_is_better else min
        return pick(means, key=means.get)

    # --------------------------------------------------------------- output

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table: one row per explainer, one column per metric (mean ± stderr).

        The best mean of each column (by the metric's direction) is in bold.
        """
        head = ["explainer"] + [
            f"{m.category}: {m.name} ({'↑' if m.higher_is_better else '↓'})" for m in self.metrics
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        best = {m.name: self.best(m.name) for m in self.metrics}
        for e in self.explainers:
            cells = [e]
            for m in self.metrics:
                mu, se = self.mean(e, m.name), self.stderr(e, m.name)
                cell = "n/a" if not np.isfinite(mu) else f"{mu:.{digits}f} ± {se:.{digits}f}"
                if best[m.name] == e:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        counts = sorted({self.count(e, m.name) for e in self.explainers for m in self.metrics})
        lines.append("")
        lines.append(
            f"{self.num_examples} examples; mean ± standard error over the examples with a "
            f"finite score (n = {', '.join(map(str, counts)) or 0}); ↑/↓: higher/lower is better; "
            "bold: best of the column."
        )
        for name, why in self.skipped.items():
            lines.append(f"- skipped {name}: {why}")
        for f in self.failures:
            where = f"batch {f['batch']} (examples {f['start']}..{f['start'] + f['size'] - 1})"
            what = "/".join(str(v) for v in (f.get("explainer"), f.get("metric")) if v)
            lines.append(f"- failed {where}{' ' + what if what else ''}: {f['error']}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN written as None)."""

        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {
            "explainers": list(self.explainers),
            "metrics": [dataclasses.asdict(m) for m in self.metrics],
            "summary": {
                e: {m.name: {"mean": num(self.mean(e, m.name)),
                             "stderr": num(self.stderr(e, m.name)),
                             "n": self.count(e, m.name)} for m in self.metrics}
                for e in self.explainers
            },
            "scores": {
                e: {m.name: [num(v) for v in np.asarray(self.scores[e][m.name], np.float64)]
                    for m in self.metrics}
                for e in self.explainers
            },
            "targets": [int(t) for t in self.targets],
            "failures": list(self.failures),
            "skipped": dict(self.skipped),
            "meta": self.meta,
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The results as JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        if path is not None:
            atomic_write(Path(path), text.encode())
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Results:
        """Rebuild results from :meth:`to_dict` output."""
        metrics = tuple(MetricInfo(**m) for m in d["metrics"])
        scores = {
            e: {m: np.asarray([np.nan if v is None else v for v in vals], np.float64)
                for m, vals in per.items()}
            for e, per in d["scores"].items()
        }
        return cls(tuple(d["explainers"]), metrics, scores,
                   np.asarray(d["targets"], np.int64), list(d.get("failures", [])),
                   dict(d.get("skipped", {})), dict(d.get("meta", {})))

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> Results:
        """Read results written by :meth:`to_json` (a path or the JSON text)."""
        p = Path(path_or_text)
        text = p.read_text() if not str(path_or_text).lstrip().startswith("{") else path_or_text
        return cls.from_dict(json.loads(text))

    def save(self, out_dir: str | os.PathLike, chart: bool = True,
             title: str | None = None) -> list[Path]:
        """Write ``results.json``, ``results.md`` and (``chart``) ``results.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "results.json", out / "results.md"]
        self.to_json(paths[0])
        atomic_write(paths[1], self.to_markdown().encode())
        if chart and self.metrics:
            try:
                from jaxlrp.viz import metric_chart
            except ImportError as e:  # matplotlib (or jaxlrp.viz) missing: no chart
                _report(f"no chart written: {_error_text(e)}")
                return paths
            png = out / "results.png"
            metric_chart(self.table(), self.categories(), png,
                         higher_is_better={m.name: m.higher_is_better for m in self.metrics},
                         title=title)
            paths.append(png)
        return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


# ----------------------------------------------------------------------------- I/O helpers




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


# ----------------------------------------------------------------------------- validation


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
            if name not in _NAMED:
                _NAMED[name] = registry.get(name)  # one object per name: metric jits reuse it
            out[name] = _NAMED[name]
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


# ----------------------------------------------------------------------------- the driver


def _jitted(fn: Explainer, model: Any) -> Explainer:
    """Jit an explainer when the model is a pytree (NNX module or LinenModel)."""
    if not isinstance(model, (nnx.Module, LinenModel)):
        return fn
    try:
        jfn = _JITTED.get(fn)
        if jfn is None:
            jfn = _JITTED[fn] = jax.jit(fn)
        return jfn
    except TypeError:  # unhashable callable
        return jax.jit(fn)


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


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


def _progress(batches: Iterable, total: int | None, progress: bool) -> Iterable:
    if not progress:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc="evaluate", unit="batch")


def _report(msg: str) -> None:
    print(f"jaxlrp.evaluate: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- CLI


def _metric_names() -> tuple[str, ...]:
    from jaxlrp.metrics import names

    return names()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``jaxlrp evaluate`` options to ``parser``."""
    parser.add_argument("--model", default="default",
                        help="'default' (the shipped VGG), 'efficientnet-lite0' or a checkpoint "
                             "PATH (jaxlrp.checkpoint)")
    parser.add_argument("--data", default=None,
                        help="'embedded' (test split, with masks), 'photos' (bundled real "
                             "photos, no masks) or 'tfds:NAME'; default: embedded for the "
                             "default model, photos for efficientnet-lite0")
    parser.add_argument("--n", type=int, default=100, help="number of examples")
    parser.add_argument("--explainers", default=",".join(DEFAULT_EXPLAINERS),
                        help="comma-separated explainer names")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated names of registered metrics (default: the "
                             "paper's suite); one of: " + ", ".join(_metric_names()))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target", choices=("label", "predicted"), default="label")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random metrics")
    parser.add_argument("--out", default=None,
                        help="output folder (results.json/.md/.png, per-batch files)")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute batches already finished in --out")
    parser.add_argument("--no-progress", action="store_true")


def load_model(spec: str) -> Any:
    """'default', 'efficientnet-lite0' or a checkpoint path -> model."""
    if spec == "default":
        from jaxlrp.models import default_model

        return default_model()
    if spec in ("efficientnet-lite0", "efficientnet_lite0"):
        from jaxlrp.models import efficientnet_lite0

        return efficientnet_lite0()
    if not Path(spec).is_file():
        raise ExplanationError(
            f"--model: expected 'default', 'efficientnet-lite0' or a checkpoint file, got {spec!r}"
        )
    from jaxlrp import checkpoint

    return checkpoint.load(spec)


def photos_batches(n: int | None = None) -> list[tuple[np.ndarray, np.ndarray, None]]:
    """The bundled photos preprocessed for EfficientNet-Lite0, as one batch without masks.

    Labels are the photos' expected top-1 ImageNet classes.
    """
    from jaxlrp import photos
    from jaxlrp.models import preprocess

    items = photos.load()[: n if n else None]
    x = np.concatenate([np.asarray(preprocess(p.image)) for p in items])
    y = np.asarray([p.label for p in items], np.int32)
    return [(x, y, None)]


def load_data(spec: str, n: int | None, model_spec: str) -> Any:
    """The --data option -> a Dataset or a list of batches."""
    from jaxlrp import data as jdata

    if spec == "photos":
        return photos_batches(n)
    if spec == "embedded":
        return jdata.embedded("test", n=n, seed=0)
    if spec.startswith("tfds:"):
        if model_spec in ("efficientnet-lite0", "efficientnet_lite0"):
            from jaxlrp.models import preprocess

            ds = jdata.load(spec, "test", n=n)
            return [(np.asarray(preprocess(ds.images[i:i + 16])), ds.labels[i:i + 16],
                     None) for i in range(0, len(ds), 16)]
        return jdata.load(spec, "test", n=n)
    raise ExplanationError(f"--data: expected 'embedded', 'photos' or 'tfds:NAME', got {spec!r}")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``jaxlrp evaluate`` with parsed ``args``; print the table; return the exit code."""
    try:
        data_spec = args.data or ("photos" if args.model.startswith("efficientnet") else
                                  "embedded")
        if data_spec == "photos":
            print("jaxlrp evaluate: the bundled photos have no masks; Localisation is skipped",
                  file=sys.stderr)
        model = load_model(args.model)
        data = load_data(data_spec, args.n, args.model)
        explainers = [s.strip() for s in args.explainers.split(",") if s.strip()]
        metrics = None if not args.metrics else [s.strip() for s in args.metrics.split(",")
                                                 if s.strip()]
        results = evaluate(model, data, explainers, metrics, target=args.target,
                           batch_size=args.batch_size, key=args.seed, out_dir=args.out,
                           resume=not args.no_resume, progress=not args.no_progress,
                           meta={"model": args.model, "data": data_spec, "n": args.n})
    except ExplanationError as e:
        print(f"jaxlrp evaluate: error: {e}", file=sys.stderr)
        return 2
    print(results.to_markdown())
    if args.out:
        print(f"wrote {args.out}/results.json, results.md, results.png")
    return 0 if not results.failures else 1


__all__ = [
    "DEFAULT_EXPLAINERS",
    "MetricInfo",
    "Results",
    "add_cli_arguments",
    "evaluate",
    "load_data",
    "load_model",
    "photos_batches",
    "run_cli",
]
