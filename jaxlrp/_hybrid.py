"""The Grad-CAM x LRP hybrid of arXiv 2405.12175.

Pipeline (defaults from the paper's public re-implementation, all parameters):

1. CAM (Grad-CAM++ by default) at the last convolutional block: ReLU, min-max
   normalisation, bilinear resize to the input size, min-max again.
2. Denoise: ``clip(cam - threshold, 0, 1)`` with ``threshold = 0.2``.
3. LRP with the ``paper`` composite (Alpha1-Beta0 on convs, Epsilon(0) on dense
   layers); reduce the input relevance over colour channels with a signed mean and
   divide by the per-image max.
4. Multiply elementwise; divide by the per-image max.
5. Gaussian blur, 5x5, sigma 4, reflect-101 borders (OpenCV's default); divide by
   the per-image max; clip to [0, 1] (negative evidence, rare with the paper's
   composite, is dropped at the very end so that maps are in [0, 1]).
   Why sigma 4: the public re-implementation calls
   ``cv2.GaussianBlur(x, (5, 5), cv2.BORDER_DEFAULT)``; the third positional argument
   of ``GaussianBlur`` is sigmaX, so the border constant ``BORDER_DEFAULT`` (= 4) became
   the blur's width. 4 is kept as the faithful default (on a 5x5 kernel it is close to a
   box filter); ``sigma`` changes it.

The CAM and the LRP share one forward pass
(:func:`lrp_with_layer_gradient`). Steps 2-5 are
:func:`combine`, a pure function of ``(cam, relevance)`` made of small steps, usable
under ``jax.jit`` and ``jax.vmap`` on any backend. Every per-image normalisation is
safe on all-zero maps (they stay zero, no NaN).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp import _cache
from jaxlrp import _image as image
from jaxlrp import cam as _cam
from jaxlrp._cam_core import add_at_layer
from jaxlrp._lrp import canonizers as C
from jaxlrp._lrp import composites as K
from jaxlrp._lrp.engine import (
    check_paths,
    forward_env,
    initial_relevance,
    module_types,
    propagate,
)
from jaxlrp._lrp.graph import trace
from jaxlrp._tracing import all_concrete, apply_checked, as_adapter, static_key
from jaxlrp._validation import (
    check_images,
    check_positive_int,
    check_range,
    finite_rows,
    poison,
    static_targets,
    valid_targets,
)
from jaxlrp.errors import ExplanationError


def cam_methods() -> tuple[str, ...]:
    """The CAM methods the hybrid can use: every registered method with a map of
    (activations, gradients) (:data:`jaxlrp.cam.CAMS`; Score-CAM has none), aliases included."""
    return tuple(n for n in _cam.CAMS.choices() if _cam.CAMS.get(n).map is not None)


REDUCTIONS = ("mean", "sum", "abs_mean", "max_abs")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["cam", "denoised", "relevance_map", "product", "hybrid", "logits"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class HybridParts:
    """Every intermediate map of the hybrid, each (B, H, W); and the model's (B, K)
    ``logits`` from the same forward pass (None from :func:`combine_parts`)."""

    cam: jax.Array
    denoised: jax.Array
    relevance_map: jax.Array
    product: jax.Array
    hybrid: jax.Array
    logits: jax.Array | None = None


# ----------------------------------------------------------------------------- steps


def denoise(cam: jax.Array, threshold: float = 0.2) -> jax.Array:
    """``clip(cam - threshold, 0, 1)``. (B, H, W) -> (B, H, W)."""
    return jnp.clip(cam - threshold, 0.0, 1.0)


#: channel counts up to this are reduced by a chain of slices (:func:`_over_channels`)
UNROLL_CHANNELS = 16


def _over_channels(r: jax.Array, op: Any, reduce: Any) -> jax.Array:
    """(..., C) -> (...): ``op`` folded over the last axis, or ``reduce(r, -1)`` for large C.

    Why a chain of slices and not a ``reduce``: XLA:CPU fuses a channel reduction of
    the input relevance with the convolutions that produce it, both transposed
    convolutions of the first block in one YNNPACK fusion, which runs about 4x slower
    than the two apart (VGG16, batch 32: 7.3 s against 1.7 s, and the hybrid 25 s
    against 17 s, at its floor). Elementwise ops on slices are not fused that way; on
    other backends they fuse into one loop, at the cost of the reduce.
    """
    c = r.shape[-1]
    if c > UNROLL_CHANNELS:
        return reduce(r, axis=-1)
    out = r[..., 0]
    for i in range(1, c):
        out = op(out, r[..., i])
    return out


def reduce_channels(relevance: jax.Array, how: str = "mean") -> jax.Array:
    """(B, H, W, C) -> (B, H, W): signed ``mean`` (paper), ``sum``, ``abs_mean`` or ``max_abs``.

    A (B, H, W) input is returned unchanged.
    """
    if relevance.ndim == 3:
        return relevance
    c = relevance.shape[-1]
    if how == "mean":
        return _over_channels(relevance, jnp.add, jnp.sum) / c
    if how == "sum":
        return _over_channels(relevance, jnp.add, jnp.sum)
    if how == "abs_mean":
        return _over_channels(jnp.abs(relevance), jnp.add, jnp.sum) / c
    if how == "max_abs":
        return _over_channels(jnp.abs(relevance), jnp.maximum, jnp.max)
    raise ExplanationError(f"reduce: expected one of {REDUCTIONS}, got {how!r}")


def combine_parts(
    cam: jax.Array,
    relevance: jax.Array,
    *,
    threshold: float = 0.2,
    reduce: str = "mean",
    ksize: int = 5,
    sigma: float = 4.0,
) -> HybridParts:
    """Steps 2-5 with every intermediate map. cam: (B,H,W) in [0,1]; relevance: (B,H,W[,C])."""
    den = denoise(cam, threshold)
    rel = image.max_normalize(reduce_channels(relevance, reduce))
    prod = image.max_normalize(den * rel)
    blurred = image.max_normalize(image.gaussian_blur(prod, ksize, sigma))
    return HybridParts(cam, den, rel, prod, jnp.clip(blurred, 0.0, 1.0))


def combine(
    cam: jax.Array,
    relevance: jax.Array,
    *,
    threshold: float = 0.2,
    reduce: str = "mean",
    ksize: int = 5,
    sigma: float = 4.0,
) -> jax.Array:
    """Denoise the CAM, multiply with the reduced LRP map, blur, normalise.

    Args:
      cam: (B, H, W) CAM, min-max normalised to [0, 1].
      relevance: (B, H, W, C) input relevance (or an already reduced (B, H, W) map).
    Returns:
      (B, H, W) in [0, 1].
    """
    _check_options(threshold, reduce, ksize, sigma)
    return combine_parts(cam, relevance, threshold=threshold, reduce=reduce, ksize=ksize,
                         sigma=sigma).hybrid


def _check_options(threshold, reduce, ksize, sigma) -> None:
    check_range(threshold, "threshold", 0.0, 1.0)
    check_positive_int(ksize, "ksize", odd=True)
    try:
        s = float(sigma)
    except (TypeError, ValueError) as e:
        raise ExplanationError(f"sigma: expected a positive number, got {sigma!r}") from e
    if not s > 0:
        raise ExplanationError(f"sigma: expected a positive number, got {sigma!r}")
    if reduce not in REDUCTIONS:
        raise ExplanationError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")


# --------------------------------------------------------------------- the shared forward pass


def lrp_with_layer_gradient(
    adapter, comp, canon, init, params, x, t, layer: str
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """LRP and the activation/gradient at ``layer`` from ONE shared forward pass.

    The model is traced with a zero ``delta`` added to ``layer``'s output (an extra
    input of the jaxpr); the forward equations run once under ``jax.vjp`` w.r.t.
    ``delta``, giving the gradient of ``sum_b logits[b, t_b]`` at the layer for the CAM,
    while the same forward values feed the relevance pass.

    Returns:
      (input relevance (B,H,W,C), activations (B,h,w,c), gradients (B,h,w,c),
      logits (B,K), targets (B,)).
    """
    # the layer's output shape from the cached layer list (no extra trace of the model)
    a_shape = next((info.shape for info in adapter.layers(x) if info.path == layer), None)
    if a_shape is None:
        raise ExplanationError(f"layer: no submodule {layer!r} is called by the model")
    delta0 = jnp.zeros(a_shape, x.dtype)

    def apply_with_delta(pd, xx):
        p, d = pd
        return adapter.apply(p, xx, hook=add_at_layer(layer, d))

    graph, leaves = trace(apply_with_delta, (params, delta0), x)
    delta_id = graph.in_ids[-2]
    graph = C.apply_all(graph, canon)
    graph.types = module_types(adapter, x)
    check_paths(comp, graph)
    acts_id = next(e.outs[0] for e in graph.eqns if delta_id in e.ins)

    def forward(delta):
        env = forward_env(graph, list(leaves[:-1]) + [delta], x)
        return env[graph.out_id], env

    logits, vjp, env = jax.vjp(forward, delta0, has_aux=True)
    if t is None:
        t = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    onehot = jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype)
    (grads,) = vjp(onehot)
    rx, _ = propagate(graph, env, comp, initial_relevance(logits, t, init))
    return rx, env[acts_id], grads, logits, t


# ----------------------------------------------------------------------------- entry point


def hybrid(
    model: Any,
    x: jax.Array,
    target: Any = "predicted",
    *,
    cam: str = "gradcam++",
    layer: str | None = None,
    threshold: float = 0.2,
    composite: Any = None,
    canonizers: Any = None,
    reduce: str = "mean",
    ksize: int = 5,
    sigma: float = 4.0,
    return_parts: bool = False,
    tokens: Any = None,
) -> Any:
    """The hybrid explanation: denoised CAM x channel-reduced LRP, blurred.

    Args:
      model: an NNX module, ``(linen_module, variables)`` or ``jaxlrp.linen(...)``.
      x: (B, H, W, C) floating images.
      target: an int, a (B,) int array or ``"predicted"``.
      cam: ``gradcam++`` (paper), ``gradcam``, ``xgradcam``, ``layercam``, ``hirescam`` or
        any method registered with :func:`jaxlrp.cam.register_cam` (:func:`cam_methods`).
      layer: CAM layer path; None is the last spatial layer with parameters (CNNs) or
        the last block whose patch tokens influence the logits (ViTs).
      threshold: denoising threshold in [0, 1].
      composite: LRP composite (None: :func:`jaxlrp.composites.paper`).
      canonizers: LRP canonizers (None: BatchNorm folding).
      reduce: channel reduction of the relevance (``mean``: signed mean, the paper's).
      ksize: odd Gaussian kernel size; sigma: its standard deviation (> 0).
      return_parts: return :class:`HybridParts` with every intermediate map.
      tokens: grid of a token CAM layer (B, N, D): None (automatic), ``(h, w)`` or
        ``(h, w, skip)`` (see :func:`jaxlrp.cam.to_grid`).
    Returns:
      (B, H, W) maps in [0, 1] (NaN for examples with non-finite input or an
      out-of-range target under a trace; eager calls raise instead).
    """
    x = check_images(x)
    if cam not in _cam.CAMS or _cam.CAMS.get(cam).map is None:
        raise ExplanationError(f"cam: expected one of {list(cam_methods())}, got {cam!r}")
    cam = _cam.CAMS.canonical(cam)
    _check_options(threshold, reduce, ksize, sigma)
    comp = K.get(composite)
    canon = tuple(C.default() if canonizers is None else canonizers)
    adapter = as_adapter(model)
    out = apply_checked(adapter, x)
    layer, _ = _cam.resolve_layer(adapter, x, layer, tokens)
    tokens = None if tokens is None else tuple(int(v) for v in tokens)
    t = static_targets(target, x.shape[0], out.shape[-1])
    opts = (cam, layer, float(threshold), reduce, int(ksize), float(sigma), return_parts,
            tokens)
    if not all_concrete(adapter.params, x, t):
        return _hybrid(adapter, comp, canon, opts, adapter.params, x, t)
    # eager: one compile per structure; composite/canonizer arrays are arguments
    cstat, carrays = _cache.partition(comp)
    kstat, karrays = _cache.partition(canon)
    key = ("hybrid", static_key(adapter), cstat.key, kstat.key, opts)
    return _cache.jit_call(_cache.JIT, key, _hybrid_cached, (adapter, cstat, kstat, opts),
                           (adapter.params, carrays, karrays, x, t))


def _hybrid_cached(adapter, cstat, kstat, opts, params, carrays, karrays, x, t):
    return _hybrid(adapter, cstat.rebuild(carrays), kstat.rebuild(karrays), opts, params, x, t)


def _hybrid(adapter, comp, canon, opts, params, x, t):
    method, layer, threshold, reduce, ksize, sigma, return_parts, tokens = opts
    rx, acts, grads, logits, t = lrp_with_layer_gradient(
        adapter, comp, canon, "logit", params, x, t, layer
    )
    cam_map = _cam.CAMS.get(method).map(_cam.to_grid(acts, tokens), _cam.to_grid(grads, tokens))
    cam_map = _cam.postprocess(cam_map, x.shape[1:3], relu=True, upsample=True, normalize=True)
    parts = combine_parts(cam_map, rx, threshold=threshold, reduce=reduce, ksize=ksize,
                          sigma=sigma)
    ok = finite_rows(x) & valid_targets(t, logits.shape[-1])
    if return_parts:
        return dataclasses.replace(jax.tree.map(lambda m: poison(m, ok), parts), logits=logits)
    return poison(parts.hybrid, ok)
