"""Evaluate explainers with a metric suite over a dataset.

:func:`evaluate` computes each explainer's maps once per batch, scores them with every
metric (per example), and returns a :class:`Results` table of mean and standard error
per explainer x metric, with the raw per-example scores. With ``out_dir`` it writes
each finished batch to disk (atomically) so that an interrupted run resumes where it
stopped, and finally ``results.json``, ``results.md`` and a bar chart.

One module per concern:

* :mod:`.results` -- the :class:`Results` table (summaries, markdown, JSON, files);
* :mod:`.run` -- the driver, :func:`evaluate`;
* :mod:`.storage` -- resumable per-batch storage (manifest, batch files, digests);
* :mod:`.inputs` -- validation of the explainers, metrics and batches given.

The command ``jaxlrp evaluate`` lives in :mod:`jaxlrp.cli.evaluate`.
"""

from __future__ import annotations

from jaxlrp.evaluation.results import MetricInfo, Results
from jaxlrp.evaluation.run import DEFAULT_EXPLAINERS, evaluate

__all__ = ["DEFAULT_EXPLAINERS", "MetricInfo", "Results", "evaluate"]
