"""Explanation penalties: train a model to put no relevance on a known region.

"Right for the right reasons" (Ross et al. 2017) adds to the task loss a penalty on
the explanation inside a user-given mask (e.g. a known confounder such as a
watermark). :func:`explanation_penalty` does this for any jaxlrp explainer
``explain(model, x, target) -> (B, H, W) or (B, H, W, C)`` (Grad-CAM family, LRP,
the hybrid); the explainers are differentiable w.r.t. the model parameters, so the
penalty composes with an optax step under ``jax.jit``.

Which derivatives exist: the gradient of a CAM or of an LRP map w.r.t. the
*parameters* of a ReLU network is non-zero (activations and the backward pass
both depend on the weights). Derivatives of gradient-based maps w.r.t. the
*input* through the backward pass are zero almost everywhere for ReLU networks;
use :func:`jaxlrp.models.soften` for such second-order work.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp.errors import ExplanationError
from jaxlrp.typing import Aggregate, Explainer

__all__ = ["explanation_penalty"]


_KINDS = ("abs", "square")
_AGGREGATE = ("mean", "sum", "none")


def explanation_penalty(
    explain: Explainer,
    model: Any,
    x: jax.Array,
    target: Any,
    mask: Any,
    *,
    aggregate: Aggregate = "mean",
    kind: str = "abs",
) -> jax.Array:
    """Relevance that ``explain`` puts inside ``mask``.

    For each example ``b`` with map ``m = explain(model, x, target)``::

        p_b = sum_{h,w} mask[b,h,w] * sum_c f(m[b,h,w,c]) / (H * W)

    with ``f = abs`` or ``square``; a (B, H, W) map has one channel. Dividing by the
    number of pixels makes ``p_b`` the mean over the image of the masked relevance,
    independent of the image size.

    Args:
      explain: ``explain(model, x, target) -> (B, H, W) or (B, H, W, C)``, e.g.
        ``jaxlrp.cam.gradcam``, ``jaxlrp._lrp.lrp``, ``jaxlrp._hybrid.hybrid`` or an entry
        of ``jaxlrp.explainers.get(name)``.
      model: passed through to ``explain`` (NNX module, Linen pair, ...).
      x: (B, H, W, C) images.
      target: passed to ``explain``; for training use the true labels (B,).
      mask: (B, H, W) or (H, W) weights (bool or float, e.g. 1 on a confounder);
        must match the map's spatial size.
      aggregate: ``"mean"`` over the batch (default), ``"sum"``, or ``"none"`` for (B,).
      kind: ``"abs"`` (default) or ``"square"``.
    Returns:
      A scalar (``"mean"``/``"sum"``) or (B,) penalties.

    Training-step pattern (NNX; ``nnx.value_and_grad`` or split/merge both work)::

        def loss_fn(params, x, y, mask):
            m = nnx.merge(graphdef, params, rest)
            ce = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
            pen = explanation_penalty(jaxlrp.cam.gradcam, m, x, y, mask)
            return ce + lam * pen

        @jax.jit
        def step(params, opt_state, x, y, mask):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y, mask)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss
    """
    if not callable(explain):
        raise ExplanationError(
            f"explain: expected a function explain(model, x, target) -> map, "
            f"got {type(explain).__name__}"
        )
    if kind not in _KINDS:
        raise ExplanationError(f"kind: expected one of {_KINDS}, got {kind!r}")
    if aggregate not in _AGGREGATE:
        raise ExplanationError(f"aggregate: expected one of {_AGGREGATE}, got {aggregate!r}")
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        mask = jnp.asarray(mask)
    if not (jnp.issubdtype(mask.dtype, jnp.floating) or jnp.issubdtype(mask.dtype, jnp.bool_)
            or jnp.issubdtype(mask.dtype, jnp.integer)):
        raise ExplanationError(f"mask: expected bool or float weights, got dtype {mask.dtype}")

    maps = explain(model, x, target)
    shape = getattr(maps, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        got = tuple(shape) if shape is not None else type(maps).__name__
        raise ExplanationError(
            f"explain: expected maps of shape (B, H, W) or (B, H, W, C), got {got}"
        )
    b, h, w = shape[:3]
    if mask.ndim == 2:
        mask = jnp.broadcast_to(mask, (b, *mask.shape))
    if tuple(mask.shape) != (b, h, w):
        raise ExplanationError(
            f"mask: expected shape ({b}, {h}, {w}) or ({h}, {w}) to match the maps "
            f"{tuple(shape)}, got {tuple(mask.shape)}"
        )
    values = jnp.abs(maps) if kind == "abs" else jnp.square(maps)
    if values.ndim == 4:
        values = jnp.sum(values, axis=-1)
    weights = mask.astype(values.dtype)
    per_example = jnp.sum(weights * values, axis=(1, 2)) / (h * w)
    if aggregate == "none":
        return per_example
    if aggregate == "sum":
        return jnp.sum(per_example)
    return jnp.mean(per_example)
