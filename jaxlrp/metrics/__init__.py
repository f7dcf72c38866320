"""Quantus-style evaluation metrics in JAX, one module per family.

Every metric is a pure function over a batch returning per-example scores (B,)
(pixel-flipping and region-perturbation return curves (B, T); the
parameter-randomisation test returns (B, L)). Random metrics take a
``jax.random`` key. Preprocessing follows Quantus 0.6.0's defaults (see
:mod:`jaxlrp.metrics._common` and each docstring for the documented deviations).

:func:`default_suite` lists the five metrics of the paper's evaluation protocol
with a uniform call signature ``fn(model, x, y, a, *, explain=None, masks=None,
key=None) -> (B,)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxlrp.errors import ExplanationError
from jaxlrp.metrics.complexity import complexity, effective_complexity, sparseness
from jaxlrp.metrics.faithfulness import (
    curve_auc,
    faithfulness_correlation,
    monotonicity,
    pixel_flipping,
    region_perturbation,
)
from jaxlrp.metrics.localisation import (
    attribution_localisation,
    auc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from jaxlrp.metrics.randomisation import (
    efficient_mprt,
    model_parameter_randomisation,
    parameter_layers,
    random_logit,
    smooth_mprt,
)
from jaxlrp.metrics.robustness import avg_sensitivity, local_lipschitz_estimate, max_sensitivity

UniformMetric = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric of an evaluation suite.

    ``fn(model, x, y, a, *, explain=None, masks=None, key=None) -> (B,)``;
    ``needs_explainer``/``needs_masks`` say which of the keywords it requires.
    """

    name: str
    category: str
    fn: UniformMetric
    needs_explainer: bool
    needs_masks: bool
    higher_is_better: bool


def _need(value: Any, arg: str, metric: str) -> Any:
    if value is None:
        raise ExplanationError(f"{arg}: the metric {metric} needs it, got None")
    return value


def _faithfulness_correlation(model, x, y, a, *, explain=None, masks=None, key=None):
    return faithfulness_correlation(model, x, y, a, _need(key, "key", "FaithfulnessCorrelation"),
                                    nr_runs=10, subset_size=224, perturb_baseline="black",
                                    similarity="pearson")


def _avg_sensitivity(model, x, y, a, *, explain=None, masks=None, key=None):
    return avg_sensitivity(model, x, y, a, _need(explain, "explain", "AvgSensitivity"),
                           _need(key, "key", "AvgSensitivity"), nr_samples=10, lower_bound=0.2,
                           norm="fro", perturb="uniform")


def _sparseness(model, x, y, a, *, explain=None, masks=None, key=None):
    return sparseness(a, abs=True)


def _relevance_rank_accuracy(model, x, y, a, *, explain=None, masks=None, key=None):
    return relevance_rank_accuracy(a, _need(masks, "masks", "RelevanceRankAccuracy"))


def _random_logit(model, x, y, a, *, explain=None, masks=None, key=None):
    return random_logit(model, x, y, a, _need(explain, "explain", "RandomLogit"),
                        _need(key, "key", "RandomLogit"), similarity="ssim")


def default_suite() -> tuple[Metric, ...]:
    """The paper's five default metrics, one per category, with the Quantus tutorial's settings.

    Faithfulness: FaithfulnessCorrelation (nr_runs=10, subset_size=224, black baseline,
    Pearson); Robustness: AvgSensitivity (nr_samples=10, lower_bound=0.2, Frobenius norm,
    uniform noise); Complexity: Sparseness (Gini, abs=True); Localisation:
    RelevanceRankAccuracy; Randomisation: RandomLogit (SSIM, 2-D; see :func:`random_logit`).
    """
    return (
        Metric("FaithfulnessCorrelation", "Faithfulness", _faithfulness_correlation,
               needs_explainer=False, needs_masks=False, higher_is_better=True),
        Metric("AvgSensitivity", "Robustness", _avg_sensitivity,
               needs_explainer=True, needs_masks=False, higher_is_better=False),
        Metric("Sparseness", "Complexity", _sparseness,
               needs_explainer=False, needs_masks=False, higher_is_better=True),
        Metric("RelevanceRankAccuracy", "Localisation", _relevance_rank_accuracy,
               needs_explainer=False, needs_masks=True, higher_is_better=True),
        Metric("RandomLogit", "Randomisation", _random_logit,
               needs_explainer=True, needs_masks=False, higher_is_better=False),
    )


__all__ = [
    "Metric",
    "default_suite",
    "faithfulness_correlation",
    "pixel_flipping",
    "region_perturbation",
    "monotonicity",
    "curve_auc",
    "avg_sensitivity",
    "max_sensitivity",
    "local_lipschitz_estimate",
    "sparseness",
    "complexity",
    "effective_complexity",
    "pointing_game",
    "attribution_localisation",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
    "auc",
    "random_logit",
    "model_parameter_randomisation",
    "parameter_layers",
    "efficient_mprt",
    "smooth_mprt",
]
