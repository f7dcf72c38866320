"""Quantus-style evaluation metrics in JAX, one module per family.

Every metric is a pure function over a batch returning per-example scores (B,)
(pixel-flipping and region-perturbation return curves (B, T); the
parameter-randomisation test returns (B, L); their registered metrics reduce these to
(B,)). Random metrics take a ``jax.random`` key. Preprocessing follows Quantus 0.6.0's
defaults (see :mod:`jaxlrp.metrics.helpers` and each docstring for the documented
deviations).

Each metric function is registered with :func:`metric` (the contract: name, category,
direction, needs) in :data:`METRICS`; :func:`get` returns the :class:`Metric`, called
uniformly as ``m(model, x, y, a, *, explain=None, masks=None, key=None) -> (B,)``.
:func:`default_suite` lists the five metrics of the paper's evaluation protocol.
Write a new one with :mod:`jaxlrp.metrics.helpers` (see ``docs/metrics.md``).
"""

from __future__ import annotations

from jaxlrp.metrics import helpers
from jaxlrp.metrics._complexity import complexity, effective_complexity, sparseness
from jaxlrp.metrics._faithfulness import (
    curve_auc,
    faithfulness_correlation,
    monotonicity,
    normalised_auc,
    pixel_flipping,
    region_perturbation,
)
from jaxlrp.metrics._localisation import (
    attribution_localisation,
    auc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from jaxlrp.metrics._randomisation import (
    efficient_mprt,
    model_parameter_randomisation,
    parameter_layers,
    random_logit,
    smooth_mprt,
)
from jaxlrp.metrics._robustness import avg_sensitivity, local_lipschitz_estimate, max_sensitivity
from jaxlrp.metrics.base import (
    METRICS,
    Metric,
    default_suite,
    get,
    make_metric,
    metric,
    names,
    unregister,
)

__all__ = [
    "METRICS",
    "Metric",
    "default_suite",
    "get",
    "helpers",
    "make_metric",
    "metric",
    "names",
    "normalised_auc",
    "unregister",
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
