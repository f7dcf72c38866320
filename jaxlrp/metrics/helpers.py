"""What a metric author needs: input validation, map preprocessing, similarities, a model
handle for ``jax.jit``. The built-in metrics are written with exactly these.

Validation (eager, at the boundary; each raises :class:`jaxlrp.errors.ExplanationError`
naming the argument):

=======================  ==================================================================
``check_inputs(x)``      images (B, H, W, C), finite floats -> ``jax.Array``
``check_labels(y, B, K)`` (B,) int class indices (an int broadcasts), in [0, K)
``prepare_maps(a, x)``   attributions (B, H, W) or (B, H, W, C) matching ``x`` ->
                         (B, H, W, Ca), Ca in {1, C}, float32 or wider
``as_maps(a)``           the same without images to match
``prepare_masks(m, s)``  ground-truth masks (B, H, W) -> (B, H*W) bool, none empty
``check_key(key)``       a ``jax.random`` key (a clear message when None)
``check_int``,           an int in a range; one string of a tuple of choices
``check_choice``
=======================  ==================================================================

Preprocessing and maths (pure, traceable):

=============================  ==============================================================
``preprocess(a, normalise,     Quantus's order: divide each map by its max |a| (an all-zero
abs)``                         map stays zero), then take |a|
``normalise_by_max(a)``        the first step alone
``flat(a)``                    (B, ...) -> (B, N)
``baseline_values(x, b)``      per-example replacement value (B,): "black" (min), "white"
                               (max), "mean" or a number
``score_of(logits, y, sm)``    (B, K) -> (B,) logit (or softmax probability) of class y
``pearson``, ``spearman``      row-wise correlation of (B, N) arrays -> (B,); 0 for a
                               constant row
``ssim(a, b)``                 structural similarity of (B, H, W) map pairs -> (B,)
``similarity_fn(name)``        one of ``SIMILARITIES`` as f(a, b) -> (B,)
``safe_div(n, d, fill)``       n / d, ``fill`` where |d| is zero or subnormal
=============================  ==============================================================

Models:

=============================  ==============================================================
``model_handle(model, x)``     (handle, params, K): ``handle`` is hashable (a static
                               ``jax.jit`` argument); ``handle.apply(params, x)`` runs the
                               model, ``handle.model(params)`` rebuilds it for an explainer
``batched_apply(f, xs, n)``    ``f`` over xs (N, ...) ``n`` at a time (``jax.lax.map``)
=============================  ==============================================================

A model-based metric usually validates eagerly, then calls one ``jax.jit``-ed core with
the handle (and the explainer, a hashable :class:`jaxlrp.explainers.Explainer`) as
static arguments, so that repeated calls compile once. See ``docs/metrics.md``.
"""

from __future__ import annotations

from jaxlrp.metrics._common import (
    SIMILARITIES,
    Forward,
    as_maps,
    average_ranks,
    baseline_values,
    batched_apply,
    check_choice,
    check_inputs,
    check_int,
    check_key,
    check_labels,
    flat,
    model_handle,
    normalise_by_max,
    pearson,
    prepare_maps,
    prepare_masks,
    preprocess,
    score_of,
    similarity_fn,
    spearman,
    ssim,
)
from jaxlrp.metrics._common import _safe_div as safe_div

__all__ = [
    "SIMILARITIES",
    "Forward",
    "as_maps",
    "average_ranks",
    "baseline_values",
    "batched_apply",
    "check_choice",
    "check_inputs",
    "check_int",
    "check_key",
    "check_labels",
    "flat",
    "model_handle",
    "normalise_by_max",
    "pearson",
    "prepare_maps",
    "prepare_masks",
    "preprocess",
    "safe_div",
    "score_of",
    "similarity_fn",
    "spearman",
    "ssim",
]
