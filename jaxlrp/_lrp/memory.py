"""Bounding an explanation's memory: batch chunks and recomputation.

Two independent options, both giving the same maps as the plain call:

* **batch chunks** (:func:`over_chunks`, ``lrp(..., batch_chunk=n)``, and
  :func:`chunked` for any explainer such as ``jaxlrp.hybrid``): the batch is split into
  chunks of ``n`` examples that run one after another inside one compiled function
  (``jax.lax.map``), so the forward activations that the relevance pass keeps are
  those of ``n`` examples, not of the whole batch. Peak memory falls roughly in
  proportion to ``n / B``; the price is less parallelism per step (see
  ``benchmarks/bench_memory.py`` for the measured trade-off).
* **recomputation** (:class:`Checkpointed`, ``lrp(..., checkpoint=True)``): each
  layer's relevance rule runs under ``jax.checkpoint``, so when the explanation is
  itself differentiated (explanation penalties, second-order analyses) the backward
  pass recomputes each layer's rule instead of storing its intermediates.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp.errors import ExplanationError


def check_chunk(chunk: Any, name: str = "batch_chunk") -> int | None:
    """None, or a positive int (else ``ExplanationError`` naming ``name``)."""
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ExplanationError(f"{name}: expected None or a positive int, got {chunk!r}")
    return int(chunk)


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
    if rows == 0:
        return a
    return jnp.concatenate([a, jnp.repeat(a[:1], rows, axis=0)], axis=0)


def map_chunks(fn: Callable[..., Any], chunk: int, *batched: Any) -> Any:
    """``fn(*batched)`` computed ``chunk`` rows at a time with ``jax.lax.map``.

    Args:
      fn: a function of arrays whose leading axis is the batch, returning a pytree of
        arrays with the same leading axis; rows must be independent.
      chunk: rows per step.
      batched: arrays (B, ...) or None (passed through as None).
    Returns:
      the same pytree as ``fn(*batched)``, rows in order.
    """
    b = next(a for a in batched if a is not None).shape[0]
    if chunk >= b:
        return fn(*batched)
    m = -(-b // chunk)
    pad = m * chunk - b
    idx = [i for i, a in enumerate(batched) if a is not None]
    stacked = [_pad_rows(batched[i], pad).reshape((m, chunk) + batched[i].shape[1:])
               for i in idx]

    def step(parts):
        args = list(batched)
        for i, p in zip(idx, parts, strict=True):
            args[i] = p
        return fn(*args)

    out = jax.lax.map(step, stacked)
    return jax.tree_util.tree_map(lambda o: o.reshape((m * chunk,) + o.shape[2:])[:b], out)


def over_chunks(impl: Callable[[Any, jax.Array, Any], Any], chunk: int) -> Callable:
    """``impl(params, x, t)`` (t: (B,) or None) run ``chunk`` examples at a time."""

    def run(params: Any, x: jax.Array, t: Any) -> Any:
        return map_chunks(lambda xx, tt: impl(params, xx, tt), chunk, x, t)

    return run


def chunked(explain: Callable[..., jax.Array], chunk_size: int) -> Callable[..., jax.Array]:
    """An explainer ``(model, x, target, **kw) -> maps`` that runs ``chunk_size`` examples
    at a time inside one compiled function (``jax.lax.map``): same maps, bounded memory.

    Example::

        maps = jaxlrp._lrp.memory.chunked(jaxlrp.hybrid, 8)(model, x, "predicted")

    ``target`` is ``"predicted"``, an int or a (B,) int array; ``explain`` must treat
    examples independently (every jaxlrp explainer does).
    """
    chunk_size = check_chunk(chunk_size, "chunk_size")
    if chunk_size is None:
        raise ExplanationError("chunk_size: expected a positive int, got None")

    def body(model: Any, x: jax.Array, t: Any, kw: tuple) -> jax.Array:
        return map_chunks(
            lambda a, c: explain(model, a, "predicted" if c is None else c, **dict(kw)),
            chunk_size, x, t)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def run_nnx(graphdef: Any, state: Any, x: jax.Array, t: Any, kw: tuple) -> jax.Array:
        from flax import nnx

        return body(nnx.merge(graphdef, state), x, t, kw)

    def run(model: Any, x: Any, target: Any = "predicted", **kwargs: Any) -> jax.Array:
        from flax import nnx

        from jaxlrp._validation import check_images

        x = check_images(x)
        t = None if isinstance(target, str) else jnp.broadcast_to(
            jnp.asarray(target, jnp.int32), (x.shape[0],))
        if isinstance(target, str) and target != "predicted":
            raise ExplanationError(f"target: expected 'predicted', an int or (B,) ints, "
                                   f"got {target!r}")
        kw = tuple(sorted(kwargs.items()))
        if isinstance(model, nnx.Module):
            graphdef, state = nnx.split(model)
            return run_nnx(graphdef, state, x, t, kw)
        return body(model, x, t, kw)

    return run


@dataclasses.dataclass(frozen=True)
class Checkpointed:
    """A composite whose rules run under ``jax.checkpoint`` (recomputed when differentiated).

    Wraps any composite ``LayerContext -> rule | None``; a ``None`` becomes the layer
    kind's default rule, as the engine would choose it.
    """

    composite: Any

    def __call__(self, ctx: Any) -> Any:
        from jaxlrp._lrp import composites as K
        from jaxlrp._lrp import rules as R

        rule = self.composite(ctx)
        if rule is None:
            rule = K.DEFAULTS.get(ctx.kind, R.Gradient())
        return RecomputedRule(rule)


@dataclasses.dataclass(frozen=True)
class RecomputedRule:
    """``rule(layer, inputs, r)`` under ``jax.checkpoint``."""

    rule: Any

    def __call__(self, layer: Any, inputs: tuple, r: Any) -> Any:
        return jax.checkpoint(lambda i, rr: self.rule(layer, i, rr))(inputs, r)
