"""The floor of each explainer: the least work it must do, built from the same fast ops.

For a model ``f`` and its CAM layer ``A`` (issue #17, item 1):

=============  =================================================================
floor(CAM)     forward pass + backward pass from the target logits to ``A``
floor(LRP)     forward pass + the z+ forward (the network with the paper
               composite's modified weights: ``W+`` on convolutions, dense layers
               unchanged as Epsilon(0) keeps them) + its transposed pass (the input
               gradient of that network: transposed convolutions only)
floor(hybrid)  the union: one forward shared by the CAM's backward and the z+ passes
floor(grad)    forward pass + backward pass to the input (a gradient x input map)
=============  =================================================================

Each floor is one function, jitted by the caller, that does exactly that work: every
pass runs through :func:`jaxlrp._lrp.fast_forward.call` with the pooling lowering given
(``None``: the library's measured rule; ``("xla", "xla")`` or ``("select", "select")``
to force one), so the floor can be taken as the fastest over the lowerings. The seeds
of the backward passes depend on the forward outputs (the target logits, divided by
the z+ logits), so XLA cannot drop any pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp._cam_core import add_at_layer
from jaxlrp._lrp import fast_forward
from jaxlrp._tracing import as_adapter

FLOORS = ("forward", "cam", "lrp", "hybrid")
#: also available: ``gradient`` (forward + backward to the input: a saliency map's floor)


def _positive(w: jax.Array) -> jax.Array:
    return jnp.maximum(w, 0)


def _onehot(logits: jax.Array, t: jax.Array) -> jax.Array:
    return jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype)


def _safe(z: jax.Array) -> jax.Array:
    return jnp.where(z == 0, 1, z)


def floor_fn(kind: str, model_of: Callable[[Any], Any], layer: str | None,
             pool: tuple[str, str] | None = None) -> Callable:
    """``fn(state, x, t)`` doing the floor's work for ``kind`` in :data:`FLOORS`.

    Args:
      kind: ``forward``, ``cam``, ``lrp`` or ``hybrid``.
      model_of: rebuilds the model from its state (``lambda s: nnx.merge(graphdef, s)``).
      layer: the CAM layer's module path (``cam`` and ``hybrid``).
      pool: forced pooling lowering, or None for the library's rule.
    Returns:
      a function of (state, x (B,H,W,C), t (B,)) returning arrays that depend on every pass.
    """
    if kind not in FLOORS + ("gradient",):
        raise ValueError(f"kind: expected one of {FLOORS + ('gradient',)}, got {kind!r}")

    def run_with_delta(adapter, params, x, delta):
        def fn(p, xx, d):
            seen: list = []
            return adapter.apply(p, xx, hook=add_at_layer(layer, d, seen)), seen[0]

        return fast_forward.call(fn, params, x, delta, pool=pool)

    def zplus_transposed(adapter, params, x, logits, t):
        def zplus(xx):
            return fast_forward.call(adapter.apply, params, xx, pool=pool, kernels=_positive)

        zl, back = jax.vjp(zplus, x)
        seed = _onehot(logits, t) * logits / _safe(zl)
        (c,) = back(seed)
        return x * c

    def cam_part(adapter, params, x, t, shape):
        delta0 = jnp.zeros(shape.shape, shape.dtype)
        (logits, acts), back = jax.vjp(lambda d: run_with_delta(adapter, params, x, d), delta0)
        (grads,) = back((_onehot(logits, t), jnp.zeros_like(acts)))
        return logits, acts, grads

    def fn(state, x, t):
        adapter = as_adapter(model_of(state))
        params = adapter.params
        if kind == "forward":
            return fast_forward.call(adapter.apply, params, x, pool=pool)
        if kind == "gradient":
            logits, back = jax.vjp(
                lambda xx: fast_forward.call(adapter.apply, params, xx, pool=pool), x)
            (g,) = back(_onehot(logits, t))
            return g * x
        if kind == "lrp":
            logits = fast_forward.call(adapter.apply, params, x, pool=pool)
            return zplus_transposed(adapter, params, x, logits, t)
        shape = jax.eval_shape(lambda p, xx: _acts_shape(adapter, p, xx, layer), params, x)
        logits, acts, grads = cam_part(adapter, params, x, t, shape)
        if kind == "cam":
            return acts, grads
        return acts, grads, zplus_transposed(adapter, params, x, logits, t)

    return fn


def _acts_shape(adapter: Any, params: Any, x: jax.Array, layer: str | None) -> jax.Array:
    seen = []

    def hook(path, module, out):
        if path == layer:
            seen.append(out)
        return out

    adapter.apply(params, x, hook=hook)
    if not seen:
        raise ValueError(f"layer: no submodule {layer!r} is called by the model")
    return seen[0]


def time_floor(model: Any, x: Any, kind: str = "hybrid", reps: int = 3) -> dict:
    """``_common.timeit`` of ``kind``'s floor, jitted, for an NNX ``model`` on the batch ``x``.

    Targets are the model's argmax; the CAM layer is the library's default one.
    """
    import _common as U
    from flax import nnx

    from jaxlrp.cam import resolve_layer

    graphdef, state = nnx.split(model)
    xj = jnp.asarray(x)
    t = jnp.argmax(as_adapter(model).forward(xj), -1)
    layer = resolve_layer(as_adapter(model), xj, None)[0] if kind in ("cam", "hybrid") else None
    fn = jax.jit(floor_fn(kind, lambda s: nnx.merge(graphdef, s), layer))
    return U.timeit(lambda: fn(state, xj, t), reps=reps)
