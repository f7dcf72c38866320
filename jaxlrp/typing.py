"""Types shared across jaxlrp: the explainer protocol and the string option types.

One meaning per argument name across the package:

===============  ===========================================================================
``target``       which class to explain: an int (every example), a (B,) int array, or
                 ``"predicted"`` (the model's argmax). :func:`jaxlrp.evaluate` also takes
                 ``"label"`` (the dataset's labels, its default): the one spelling that
                 needs labels, which only the evaluation driver has.
``reduce``       the channel reduction of an LRP relevance map (B, H, W, C) -> (B, H, W)
                 (:data:`Reduction`). Nothing else is called ``reduce``.
``aggregate``    how per-example values are combined over the batch (:data:`Aggregate`,
                 :func:`jaxlrp.penalty.explanation_penalty`).
``init``         the LRP starting relevance (:data:`Init`).
``cam``          a CAM method name (:data:`CAMName`), or a registered one.
===============  ===========================================================================

The ``Literal`` types list the built-in names; the registries
(:data:`jaxlrp.cam.CAMS`, :data:`jaxlrp.explainers.EXPLAINERS`,
:data:`jaxlrp.metrics.METRICS`) accept more once an entry is registered.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import jax

__all__ = [
    "Aggregate",
    "CAMName",
    "Explainer",
    "ExplainerName",
    "Init",
    "Reduction",
    "Target",
    "TargetName",
]


@runtime_checkable
class Explainer(Protocol):
    """``explain(model, x, target) -> maps``: (B, H, W, C) images to (B, H, W) maps
    (or (B, H, W, C) relevance). Any jaxlrp explainer, or a user function that is pure
    and jit-compatible, fits."""

    def __call__(self, model: Any, x: jax.Array, target: Any) -> jax.Array: ...


CAMName = Literal["gradcam", "gradcam++", "gradcam_pp", "xgradcam", "layercam", "hirescam",
                  "scorecam"]
"""Built-in CAM methods (``gradcam_pp`` is an alias of ``gradcam++``)."""

ExplainerName = Literal["gradcam", "gradcam++", "gradcam_pp", "xgradcam", "layercam",
                        "hirescam", "scorecam", "lrp", "hybrid"]
"""Built-in explainer names for :func:`jaxlrp.explainers.get`."""

Reduction = Literal["mean", "sum", "abs_mean", "max_abs"]
"""Channel reduction of a relevance map (``mean``: the paper's signed mean)."""

Aggregate = Literal["mean", "sum", "none"]
"""Batch aggregation of per-example values (``none`` keeps (B,))."""

Init = Literal["logit", "one_hot"]
"""LRP starting relevance: the target logit, or 1 for the target class."""

TargetName = Literal["predicted", "label"]
"""String spellings of ``target``; ``"label"`` only where labels exist (``evaluate``)."""

Target = int | jax.Array | Literal["predicted"]
"""``target`` of an explainer: an int, a (B,) int array or ``"predicted"``."""
