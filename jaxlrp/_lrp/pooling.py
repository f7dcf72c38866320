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

:func:`max_pool` picks, per backend and shape, which lowering computes the values
(XLA's ``reduce_window_max`` or the select chain) and which one supplies the
derivative (:func:`lowering`); both give identical values and identical derivatives,
so the choice only changes speed. :mod:`jaxlrp._lrp.fast_forward` runs a whole model
with it.
"""

from __future__ import annotations

import functools
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


# ----------------------------------------------------------------------------- the rule

#: Lowerings of a max-pool: ``"xla"`` is ``lax.reduce_window_max`` (derivative through
#: ``select_and_scatter_add``), ``"select"`` is :func:`window_max`.
LOWERINGS = ("xla", "select")

#: Forward passes on XLA:CPU whose pool input has at least this many elements per
#: example use the select chain; smaller ones keep ``reduce_window_max``. 14 * 14 * 512,
#: VGG16's last pool: with ``reduce_window_max`` there (the earlier threshold,
#: 224 * 224 * 3, kept it) the whole VGG16 forward took 2.24 s instead of 1.07 s at batch 8,
#: although that pool alone takes under a millisecond (whole-network measurements of
#: ``benchmarks/bench_hybrid.py``'s floor table, ``results/bench_hybrid_vgg16_previous_rule.md``
#: and, with this threshold, ``results/bench_hybrid_vgg16.md``); the shapes VGG's pools (at
#: most 64 * 64 * 16 per example) keep XLA's, faster there.
CPU_SELECT_FORWARD_MIN_ELEMENTS = 100_352


def lowering(
    backend: str,
    shape: Sequence[int],
    window_dimensions: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> tuple[str, str]:
    """(forward lowering, derivative lowering) for one max-pool, each in :data:`LOWERINGS`.

    The rule is measured by ``benchmarks/bench_pooling.py``, which times both lowerings'
    forward and input gradient over a grid of shapes and writes
    ``benchmarks/results/bench_pooling.json`` (its ``rule_check`` lists, per shape,
    the faster lowering and whether this function agrees). Measured on XLA:CPU
    (2 cores, quiet machine, issue #17): the derivative of the select chain is 4.8x
    faster than ``select_and_scatter_add`` on a (256, 64, 64, 16) ReLU activation;
    forward, a whole VGG16 at (8, 224, 224, 3) ran in 1.07 s with the select chain
    and 2.35 s with ``reduce_window_max``, while the small 64x64 model at batch 256
    ran in 0.100 s and 0.070 s: large per-example inputs favour the select chain
    forward, small ones XLA's (see :data:`CPU_SELECT_FORWARD_MIN_ELEMENTS`). Other
    backends (GPU, TPU) keep XLA's lowering for both until ``bench_pooling.py`` has been
    run there.

    Args:
      backend: ``jax.default_backend()`` (``"cpu"``, ``"gpu"``, ``"tpu"``).
      shape: the pool's input shape (batch first).
      window_dimensions, window_strides, padding: as ``lax.reduce_window``.
    """
    del window_dimensions, window_strides, padding  # not (yet) part of the measured rule
    if backend != "cpu":
        return "xla", "xla"
    per_example = 1
    for n in shape[1:]:
        per_example *= int(n)
    forward = "select" if per_example >= CPU_SELECT_FORWARD_MIN_ELEMENTS else "xla"
    return forward, "select"


def xla_max(
    x: jax.Array,
    window_dimensions: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    **_: Any,
) -> jax.Array:
    """``lax.reduce_window_max`` (the lowering XLA gets from ``nnx.max_pool``)."""
    ones = (1,) * len(window_dimensions)
    return lax.reduce_window_max_p.bind(
        x, window_dimensions=tuple(window_dimensions), window_strides=tuple(window_strides),
        padding=tuple(tuple(p) for p in padding), base_dilation=ones, window_dilation=ones)


_IMPL = {"xla": xla_max, "select": window_max}


@functools.cache
def _mixed(forward: str, derivative: str, dims: tuple, strides: tuple, padding: tuple):
    """A function ``x -> max-pool`` whose values come from ``forward`` and whose jvp
    (hence vjp, by transposition) is that of ``derivative``."""

    @jax.custom_jvp
    def pool(x):
        return _IMPL[forward](x, dims, strides, padding)

    @pool.defjvp
    def pool_jvp(primals, tangents):
        return jax.jvp(lambda v: _IMPL[derivative](v, dims, strides, padding), primals,
                       tangents)

    return pool


def max_pool(
    x: jax.Array,
    window_dimensions: Sequence[int],
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    base_dilation: Sequence[int] | None = None,
    window_dilation: Sequence[int] | None = None,
    *,
    backend: str | None = None,
    choice: tuple[str, str] | None = None,
) -> jax.Array:
    """``lax.reduce_window_max`` with the lowering :func:`lowering` picks.

    Same values and derivatives (ties and NaNs included) as ``reduce_window_max``;
    ``jax.jvp``, ``jax.grad``, ``jax.hessian`` and ``vmap`` go through.

    Args:
      x: any rank, e.g. (B, H, W, C); the keyword arguments are the equation's params.
      backend: overrides ``jax.default_backend()``.
      choice: overrides the rule: ``(forward, derivative)`` from :data:`LOWERINGS`.
    Returns:
      The pooled array.
    """
    params = {"base_dilation": base_dilation or (), "window_dilation": window_dilation or ()}
    dims = tuple(int(d) for d in window_dimensions)
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if not supported(params):
        return lax.reduce_window_max_p.bind(
            x, window_dimensions=dims, window_strides=strides, padding=pads,
            base_dilation=tuple(base_dilation), window_dilation=tuple(window_dilation))
    if choice is None:
        choice = lowering(backend or jax.default_backend(), jnp.shape(x), dims, strides, pads)
    forward, derivative = choice
    if forward not in _IMPL or derivative not in _IMPL:
        raise ValueError(f"choice: expected two of {LOWERINGS}, got {choice!r}")
    if forward == derivative or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        return _IMPL[forward](x, dims, strides, pads)
    return _mixed(forward, derivative, dims, strides, pads)(x)
