"""Explainers by name, as uniform functions ``explain(model, x, target) -> (B, H, W)``.

Used by the CLI, the evaluation driver and the metrics (which take an explainer
function). CAMs and the hybrid are in [0, 1]; ``lrp`` is the paper's signed channel
mean of the input relevance divided by the per-image max ``|R|`` (so in [-1, 1]).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxlrp import cam as _cam
from jaxlrp.errors import ExplanationError
from jaxlrp.hybrid import hybrid, reduce_channels
from jaxlrp.image import max_abs_normalize
from jaxlrp.lrp.engine import lrp as _lrp

Explainer = Callable[[Any, jax.Array, Any], jax.Array]

NAMES = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "lrp", "hybrid")

_CAMS = {
    "gradcam": _cam.gradcam,
    "gradcam++": _cam.gradcam_pp,
    "xgradcam": _cam.xgradcam,
    "layercam": _cam.layercam,
    "hirescam": _cam.hirescam,
    "scorecam": _cam.scorecam,
}


def lrp_map(
    model: Any, x: jax.Array, target: Any = "predicted", *, composite: Any = None,
    reduce: str = "mean", **kwargs: Any,
) -> jax.Array:
    """LRP reduced over channels and divided by the per-image max |R|: (B, H, W) in [-1, 1]."""
    return max_abs_normalize(reduce_channels(_lrp(model, x, target, composite, **kwargs), reduce))


def get(name: str, **options: Any) -> Explainer:
    """The explainer called ``name`` (see :data:`NAMES`), with keyword ``options`` bound.

    Options go to the underlying function, e.g. ``get("lrp", composite="epsilon_plus")``,
    ``get("gradcam", layer="features/2")``, ``get("hybrid", threshold=0.3)``.
    """
    if not isinstance(name, str) or name.lower() not in NAMES:
        raise ExplanationError(f"explainer: unknown name {name!r}; expected one of {list(NAMES)}")
    name = name.lower()
    if name in _CAMS:
        fn = _CAMS[name]
    elif name == "lrp":
        fn = lrp_map
    else:
        fn = hybrid
    explain = functools.partial(fn, **options) if options else fn

    def explainer(model: Any, x: jax.Array, target: Any = "predicted") -> jax.Array:
        return explain(model, x, target)

    explainer.__name__ = name
    explainer.__doc__ = f"jaxlrp explainer {name!r} with options {options}: (B,H,W,C) -> (B,H,W)."
    return explainer
