"""Grad-CAM++ with the paper's general formula (Chattopadhay et al. 2018, eq. 10): the
exact diagonal second and third derivatives of any score (``gradcam_pp(..., exact=True)``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp import _cache
from jaxlrp._cam_core import (
    _capture,
    _jittable,
    _model_shapes,
    _target_scores,
    add_at_layer,
    postprocess,
    resolve_layer,
    weighted_sum,
)
from jaxlrp._tracing import (
    Adapter,
    as_adapter,
)
from jaxlrp._validation import (
    Target,
    check_images,
    check_positive_int,
    finite_rows,
    poison,
    resolve_targets,
    valid_targets,
)
from jaxlrp.errors import ExplanationError

# ----------------------------------------------------------------------------- exact Grad-CAM++

SCORES = ("exp_logit", "logit", "probability")


def _score_fn(score: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(logits (B, K), targets (B,)) -> (B,) score Y."""
    if callable(score):
        return score
    if score == "exp_logit":
        return lambda lg, t: jnp.exp(_target_scores(lg, t))
    if score == "logit":
        return _target_scores
    if score == "probability":
        return lambda lg, t: _target_scores(jax.nn.softmax(lg, axis=-1), t)
    raise ExplanationError(f"score: expected one of {SCORES} or a callable "
                           f"(logits, target) -> (B,), got {score!r}")


def diagonal_derivatives(
    adapter: Adapter, params: Any, x: jax.Array, target: Target, layer: str, score: Any,
    chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Activations A and the diagonal derivatives of the score Y w.r.t. each element of A.

    ``d_n[b, i, j, c] = d^n Y_b / (dA[b, i, j, c])^n`` for n = 1, 2, 3. The first comes
    from one reverse pass; the second and third, for each element e of the layer, from
    a nested forward-mode derivative of ``s -> Y(A + s e)`` at s = 0 (jvp of jvp of jvp:
    about 8 forward passes' work), all examples at once (they are independent). Cost:
    h * w * C such evaluations, ``chunk_size`` of them vectorised at a time: tractable for
    small layers (a 7x7x512 layer needs 25088 of them). Returns (A, d1, d2, d3, logits).
    """
    fn = _score_fn(score)
    shape = jax.eval_shape(lambda p, xx: _capture(adapter, p, xx, layer), params, x)
    acts = _capture(adapter, params, x, layer)
    logits = adapter.apply(params, x)
    t = jax.lax.stop_gradient(resolve_targets(target, logits))
    tc = jnp.clip(t, 0, logits.shape[-1] - 1)

    def scores(delta):  # (B, h, w, C) -> (B,)
        return fn(adapter.apply(params, x, hook=add_at_layer(layer, delta)), tc)

    zero = jnp.zeros(shape.shape, shape.dtype)
    d1 = jax.grad(lambda d: jnp.sum(scores(d)))(zero)
    n = int(math.prod(shape.shape[1:]))

    def along(k):
        e = jnp.broadcast_to(jax.nn.one_hot(k, n, dtype=shape.dtype).reshape(shape.shape[1:]),
                             shape.shape)

        def f(s):
            return scores(s * e)

        def f1(s):
            return jax.jvp(f, (s,), (jnp.ones_like(s),))[1]

        def f2(s):
            return jax.jvp(f1, (s,), (jnp.ones_like(s),))[1]

        s0 = jnp.zeros((), shape.dtype)
        d2, d3 = jax.jvp(f2, (s0,), (jnp.ones_like(s0),))
        return d2, d3  # (B,), (B,)

    d2, d3 = jax.lax.map(along, jnp.arange(n), batch_size=min(chunk_size, n))
    d2 = jnp.moveaxis(d2, 0, 1).reshape(shape.shape)
    d3 = jnp.moveaxis(d3, 0, 1).reshape(shape.shape)
    return acts, d1, d2, d3, logits


def gradcam_pp_general_weights(acts: jax.Array, d1: jax.Array, d2: jax.Array,
                               d3: jax.Array) -> jax.Array:
    """Grad-CAM++ channel weights, Chattopadhay et al. eqs. 10 and 9. (B,h,w,C) -> (B,C).

    ``alpha = d2 / (2 d2 + sum_ab(A) d3)`` (0 where the denominator is 0),
    ``w_c = sum_ij alpha relu(d1)``, with d_n the diagonal n-th derivatives of the score.
    """
    sum_a = jnp.sum(acts, axis=(1, 2), keepdims=True)
    denom = 2 * d2 + sum_a * d3
    nz = denom != 0
    alpha = jnp.where(nz, d2 / jnp.where(nz, denom, 1), 0)
    return jnp.sum(alpha * jnp.maximum(d1, 0), axis=(1, 2))


def gradcam_pp_exact(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, score: Any = None,
    chunk_size: int = 64,
) -> jax.Array:
    """Grad-CAM++ with the paper's general formula (eq. 10) for any differentiable score.

    ``score``: "exp_logit" (default; Y = exp(logit), the paper's choice), "logit",
    "probability" (softmax), or a callable ``(logits (B, K), target (B,)) -> (B,)``.
    The diagonal second and third derivatives of Y w.r.t. the layer's activations are
    computed exactly (:func:`diagonal_derivatives`; cost: h * w * C nested forward-mode
    evaluations of the model, ``chunk_size`` at a time).

    When it equals the usual closed form (``exact=False``, pytorch-grad-cam's): with
    Y = exp(S) and a network that is piecewise linear after ``layer`` (ReLU, max/avg
    pooling, convolutions, dense layers, BatchNorm in inference), d_n = exp(S) g^n with
    g = dS/dA, so alpha = g^2 / (2 g^2 + sum(A) g^3) and the map is exp(S) times the
    closed-form map with ``eps=0``: equal after the min-max normalisation. It differs for
    smooth activations after the layer (softplus, GELU, SiLU, sigmoid) and for other
    scores (a softmax probability; for the raw logit of a piecewise-linear network the
    second derivatives vanish and the map is 0).
    Returns (B, H, W) (or (B, h, w) without ``upsample``).
    """
    adapter = as_adapter(model)
    x = check_images(x, "x")
    logits = _model_shapes(adapter, x)["logits"]
    layer, _ = resolve_layer(adapter, x, layer)
    score = "exp_logit" if score is None else score
    _score_fn(score)  # checks the name
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    t = resolve_targets(target, logits)
    tree = _jittable(model)
    static = dict(layer=layer, score=score, chunk_size=chunk_size)
    if tree is None:
        cam = _exact_raw(adapter, x, t, **static)
    else:
        cam = _exact_raw_jit(tree, x, t, **static)
    cam = postprocess(cam, x.shape[1:3], relu=relu, upsample=upsample, normalize=normalize)
    return poison(cam, finite_rows(x) & valid_targets(t, logits.shape[-1]))


def _exact_raw(model: Any, x: jax.Array, t: jax.Array, *, layer: str, score: Any,
               chunk_size: int) -> jax.Array:
    adapter = as_adapter(model)
    acts, d1, d2, d3, _ = diagonal_derivatives(adapter, adapter.params, x, t, layer, score,
                                               chunk_size)
    return weighted_sum(acts, gradcam_pp_general_weights(acts, d1, d2, d3))


_exact_raw_jit = _cache.register_jit(
    jax.jit(_exact_raw, static_argnames=("layer", "score", "chunk_size")))

