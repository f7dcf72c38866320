"""Max-pooling with an elementwise derivative, for the equations the LRP engine runs.

``lax.reduce_window_max`` differentiates through ``select_and_scatter_add``, which
XLA:CPU runs as a slow scalar loop (about 80% of a small VGG's input gradient at
batch 256 on 2 cores). :func:`window_max` computes the same values as a chain of
``where(candidate > best, candidate, best)`` over the ``k`` strided slices of the
window. Its derivative is ``k`` selects and slice transposes, which XLA fuses, and it
sends each output's cotangent to the *first* maximal element in window order, as
``select_and_scatter_add`` does, so ties (constant image regions) agree exactly.

Everything is built from differentiable ``lax`` primitives: ``jax.jvp``,
``jax.hessian`` and ``vmap`` work through it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def supported(params: dict) -> bool:
    """Whether :func:`window_max` handles a ``reduce_window_max`` with these params."""
    dil = tuple(params.get("base_dilation", ())) + tuple(params.get("window_dilation", ()))
    return all(d == 1 for d in dil)


def window_max(
    x: jax.Array,
    window_dimensions: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    **_: Any,
) -> jax.Array:
    """``lax.reduce_window_max`` (no dilation) with a fast, tie-exact derivative.

    Args:
      x: an array of any rank (for example (B, H, W, C)).
      window_dimensions, window_strides, padding: as ``lax.reduce_window`` (one entry,
        or one (low, high) pair, per axis of ``x``).
    Returns:
      The windowed maxima, the shape ``reduce_window_max`` gives.
    """
    if any(lo or hi for lo, hi in padding):
        fill = jnp.array(-jnp.inf, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else (
            jnp.array(jnp.iinfo(x.dtype).min, x.dtype))
        x = lax.pad(x, fill, [(lo, hi, 0) for lo, hi in padding])
    out_shape = [
        (n - w) // s + 1 for n, w, s in zip(x.shape, window_dimensions, window_strides, strict=True)
    ]
    best = None
    for offset in itertools.product(*(range(w) for w in window_dimensions)):
        start = list(offset)
        limit = [o + (m - 1) * s + 1 for o, m, s in zip(offset, out_shape, window_strides,
                                                       strict=True)]
        candidate = lax.slice(x, start, limit, window_strides)
        if best is None:
            best = candidate
        else:  # a NaN anywhere in the window propagates, as with lax.max
            take = candidate > best
            if jnp.issubdtype(x.dtype, jnp.inexact):
                take = take | jnp.isnan(candidate)
            best = jnp.where(take, candidate, best)
    return best
