"""The metric contract and the metric registry.

A metric is a function of some of ``model, x, y, a, explain, masks, key`` (by those
parameter names) plus keyword options, returning per-example scores (B,). Declare it
with :func:`metric`::

    @jaxlrp.metrics.metric("MyMetric", category="Complexity", higher_is_better=False)
    def my_metric(a, *, power=2.0):  # a: (B, H, W) or (B, H, W, C)
        v = helpers.flat(helpers.as_maps(a))
        return jnp.mean(jnp.abs(v) ** power, axis=-1)  # (B,)

The decorator returns the function unchanged (callers keep its own signature) and
registers a :class:`Metric` in :data:`METRICS`. From then on ``evaluate(metrics=
["MyMetric"])`` and ``jaxlrp evaluate --metrics MyMetric`` find it. What the metric
needs is read from its parameter names: ``explain`` (an explainer, for robustness and
randomisation), ``masks`` (ground-truth masks, for localisation), ``key`` (a
``jax.random`` key). The evaluation driver supplies them; a metric whose ``masks`` are
missing is skipped. Functions returning one value per example and step (curves
(B, T), per-layer similarities (B, L)) declare ``summary=`` to reduce them to (B,).

Helpers for writing metrics (validation, preprocessing, similarities, a hashable model
handle for ``jax.jit``) are in :mod:`jaxlrp.metrics.helpers`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp.errors import ExplanationError
from jaxlrp.registry import Registry

__all__ = ["INPUTS", "METRICS", "Metric", "default_suite", "get", "make_metric", "metric",
           "names", "unregister"]

INPUTS = ("model", "x", "y", "a", "explain", "masks", "key")
"""The arguments the evaluation driver can give a metric, by parameter name."""

_NEEDS = ("explain", "masks", "key")

CATEGORIES = ("Faithfulness", "Robustness", "Complexity", "Localisation", "Randomisation")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: a function with its name, category, direction and needs.

    Call it uniformly: ``m(model, x, y, a, *, explain=None, masks=None, key=None,
    **options) -> (B,)``; it passes on the inputs its function takes (by parameter name),
    raises :class:`ExplanationError` when one it needs is None, and reduces the output
    with ``summary`` when the function returns more than one value per example.

    Attributes:
      name: the metric's name (Quantus's class name for the metrics Quantus has).
      category: Faithfulness, Robustness, Complexity, Localisation, Randomisation (or any).
      function: the metric function.
      higher_is_better: the direction of the scores.
      inputs: which of :data:`INPUTS` the function takes.
      needs: which of ``explain``, ``masks``, ``key`` must not be None.
      options: keyword options bound to the function, as sorted (name, value) pairs.
      summary: None, or a function (B, ...) -> (B,) applied to the function's output.
      aliases: other accepted names.
    """

    name: str
    category: str
    function: Callable[..., Any]
    higher_is_better: bool
    inputs: tuple[str, ...]
    needs: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    summary: Callable[[jax.Array], jax.Array] | None = None
    aliases: tuple[str, ...] = ()

    @property
    def needs_explainer(self) -> bool:
        return "explain" in self.needs

    @property
    def needs_masks(self) -> bool:
        return "masks" in self.needs

    @property
    def needs_key(self) -> bool:
        return "key" in self.needs

    @property
    def fn(self) -> Metric:
        """The uniform callable (the metric itself)."""
        return self

    def with_options(self, **options: Any) -> Metric:
        """This metric with more keyword options bound (same name)."""
        return dataclasses.replace(self, options=tuple(sorted({**dict(self.options),
                                                               **options}.items())))

    def __call__(self, model: Any = None, x: Any = None, y: Any = None, a: Any = None, *,
                 explain: Any = None, masks: Any = None, key: Any = None,
                 **options: Any) -> jax.Array:
        given = {"model": model, "x": x, "y": y, "a": a, "explain": explain, "masks": masks,
                 "key": key}
        for need in self.needs:
            if given[need] is None:
                raise ExplanationError(f"{need}: the metric {self.name} needs it, got None")
        kwargs = {k: given[k] for k in self.inputs}
        out = self.function(**kwargs, **{**dict(self.options), **options})
        if self.summary is not None:
            out = self.summary(out)
        out = jnp.asarray(out)
        if out.ndim != 1:
            raise ExplanationError(
                f"metric {self.name}: expected per-example scores (B,), got shape "
                f"{tuple(out.shape)}; declare summary= to reduce it"
            )
        return out


METRICS: Registry[Metric] = Registry("metric", "metrics")
"""Every registered metric by name. ``evaluate`` and the CLI's ``--metrics`` read it."""


def _inputs_of(fn: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the uniform inputs ``fn`` takes, those among explain/masks/key it requires)."""
    params = inspect.signature(fn).parameters
    inputs = tuple(p for p in INPUTS if p in params)
    needs = tuple(p for p in _NEEDS if p in params
                  and params[p].default is inspect.Parameter.empty)
    return inputs, needs


def make_metric(
    fn: Callable[..., Any], name: str, *, category: str, higher_is_better: bool,
    needs: tuple[str, ...] | None = None, summary: Callable[[jax.Array], jax.Array] | None = None,
    aliases: tuple[str, ...] = (), **options: Any,
) -> Metric:
    """A :class:`Metric` for ``fn`` without registering it (``evaluate`` takes it as is).

    Arguments as :func:`metric`.
    """
    if not callable(fn):
        raise ExplanationError(f"fn: expected a metric function, got {type(fn).__name__}")
    inputs, required = _inputs_of(fn)
    if "a" not in inputs and "explain" not in inputs:
        raise ExplanationError(
            f"fn: the metric {name!r} must take the maps 'a' or an explainer 'explain'; it "
            f"takes {list(inspect.signature(fn).parameters)}"
        )
    need = required if needs is None else tuple(needs)
    if needs is None and "key" in inputs and "key" not in need:
        need = (*need, "key")
    bad = [n for n in need if n not in inputs or n not in _NEEDS]
    if bad:
        raise ExplanationError(
            f"needs: expected parameters of {getattr(fn, '__name__', fn)!r} among {_NEEDS}, "
            f"got {bad}"
        )
    return Metric(name, category, fn, bool(higher_is_better), inputs,
                  tuple(n for n in _NEEDS if n in need), tuple(sorted(options.items())),
                  summary, tuple(aliases))


def metric(
    name: str, *, category: str, higher_is_better: bool, needs: tuple[str, ...] | None = None,
    summary: Callable[[jax.Array], jax.Array] | None = None, aliases: tuple[str, ...] = (),
    **options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a metric function under ``name``; returns the function unchanged.

    Args:
      name: the metric's name in ``evaluate(metrics=[...])``, results tables and the CLI.
      category: its category (a column group of the results table).
      higher_is_better: the direction of its scores.
      needs: which of ``explain``, ``masks``, ``key`` it requires (default: those among
        its parameters without a default value, plus ``key`` when it takes one, since
        random metrics must not run without a key).
      summary: reduces the function's output to (B,) (e.g. the AUC of a (B, T) curve).
      aliases: other accepted names.
      **options: keyword options bound for the registered metric (the function's own
        defaults are used otherwise).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        m = make_metric(fn, name, category=category, higher_is_better=higher_is_better,
                        needs=needs, summary=summary, aliases=aliases, **options)
        METRICS.add(name, m, m.aliases)
        return fn

    return deco


def get(name: Any) -> Metric:
    """The registered metric called ``name`` (or an alias; case-insensitive)."""
    return METRICS.get(name)


def names() -> tuple[str, ...]:
    """Every registered metric name."""
    return METRICS.names()


def unregister(name: str) -> Metric:
    """Remove a registered metric; returns it."""
    return METRICS.remove(name)


DEFAULT_SUITE = ("FaithfulnessCorrelation", "AvgSensitivity", "Sparseness",
                 "RelevanceRankAccuracy", "RandomLogit")


def default_suite() -> tuple[Metric, ...]:
    """The paper's five default metrics, one per category, with the Quantus tutorial's settings.

    Faithfulness: FaithfulnessCorrelation (nr_runs=10, subset_size=224, black baseline,
    Pearson); Robustness: AvgSensitivity (nr_samples=10, lower_bound=0.2, Frobenius norm,
    uniform noise); Complexity: Sparseness (Gini, abs=True); Localisation:
    RelevanceRankAccuracy; Randomisation: RandomLogit (SSIM, 2-D; see
    :func:`jaxlrp.metrics.random_logit`).
    """
    return tuple(METRICS.get(n) for n in DEFAULT_SUITE)
