"""The :class:`Results` table of an evaluation: per-example scores, summaries, output files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlrp._atomic import atomic_write
from jaxlrp.errors import ExplanationError


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


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


def _report(msg: str) -> None:
    print(f"jaxlrp.evaluate: {msg}", file=sys.stderr, flush=True)


__all__ = ["MetricInfo", "Results"]
