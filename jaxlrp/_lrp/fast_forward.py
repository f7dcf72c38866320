"""Run a model (or any JAX function) with the fastest max-pool lowering.

``call(fn, *args)`` traces ``fn`` to a jaxpr and evaluates it equation by equation,
running every ``reduce_window_max`` through :func:`jaxlrp._lrp.pooling.max_pool`, which
chooses per backend and shape which lowering computes the values and which one
supplies the derivative (XLA's ``reduce_window_max`` / ``select_and_scatter_add``, or
the select chain of :func:`jaxlrp._lrp.pooling.window_max`). Values and derivatives are
identical to running ``fn`` itself; only the speed changes (see
``benchmarks/bench_pooling.py`` for the measured rule).

Every other equation is bound as it is (``custom_jvp`` functions such as
``jax.nn.relu`` keep their own derivative rules); calls (``pjit``, ``closed_call``)
whose body contains a max-pool are inlined. The function composes with ``jax.jit``,
``jax.vmap``, ``jax.grad`` and ``jax.jvp``.

Example::

    logits = fast_forward.call(adapter.apply, params, x)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jcore

from jaxlrp._lrp import pooling

_CALLS = {"pjit", "jit", "closed_call", "core_call"}


def _sub_jaxpr(eqn: Any) -> Any:
    for key in ("jaxpr", "call_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    return None


def _has_pool(jaxpr: Any) -> bool:
    for e in jaxpr.eqns:
        if e.primitive.name == "reduce_window_max":
            return True
        for v in e.params.values():
            subs = v if isinstance(v, (tuple, list)) else (v,)
            for s in subs:
                inner = getattr(s, "jaxpr", s)
                if isinstance(inner, jcore.Jaxpr) and _has_pool(inner):
                    return True
    return False


def eval_jaxpr(jaxpr: Any, consts: list, *args: Any, pool: tuple[str, str] | None = None,
               kernels: Callable[[jax.Array], jax.Array] | None = None) -> list:
    """``jax.core.eval_jaxpr`` with max-pools through :func:`pooling.max_pool`.

    ``pool`` forces a ``(forward, derivative)`` lowering (default: the measured rule);
    ``kernels`` maps every convolution's kernel operand (for example to its positive
    part, the z+ network) before the convolution runs.
    """
    env: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for e in jaxpr.eqns:
        ins = [read(v) for v in e.invars]
        name = e.primitive.name
        if name == "reduce_window_max":
            outs = [pooling.max_pool(ins[0], **e.params, choice=pool)]
        elif name in _CALLS and _sub_jaxpr(e) is not None and (kernels or _has_pool(
                getattr(_sub_jaxpr(e), "jaxpr", _sub_jaxpr(e)))):
            sub = _sub_jaxpr(e)
            if isinstance(sub, jcore.ClosedJaxpr):
                outs = eval_jaxpr(sub.jaxpr, list(sub.consts), *ins, pool=pool,
                                  kernels=kernels)
            else:
                outs = eval_jaxpr(sub, [], *ins, pool=pool, kernels=kernels)
        else:
            if kernels is not None and name == "conv_general_dilated":
                ins = [ins[0], kernels(ins[1])]
            params = e.primitive.get_bind_params(e.params)
            with e.ctx.manager:
                out = e.primitive.bind(*ins, **params)
            outs = list(out) if e.primitive.multiple_results else [out]
        for v, o in zip(e.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def call(fn: Callable[..., Any], *args: Any, pool: tuple[str, str] | None = None,
         kernels: Callable[[jax.Array], jax.Array] | None = None) -> Any:
    """``fn(*args)`` with every max-pool through :func:`pooling.max_pool`.

    Args:
      fn: a JAX-traceable function of array pytrees (for example ``adapter.apply``);
        side effects inside it (hooks that record values) see tracers of a private
        trace, so return what you need instead.
      args: its arguments (pytrees of arrays).
      pool: ``(forward, derivative)`` lowerings forced for every max-pool (each
        ``"xla"`` or ``"select"``); default: :func:`jaxlrp._lrp.pooling.lowering`.
      kernels: a function applied to every convolution kernel first (for example
        ``lambda w: jnp.maximum(w, 0)`` for the z+ network); default: unchanged.
    Returns:
      ``fn(*args)``'s output pytree: identical values and derivatives.
    """
    flat, treedef = jax.tree_util.tree_flatten(args)
    out_tree: list = []

    def flat_fn(*leaves: Any) -> list:
        out = fn(*jax.tree_util.tree_unflatten(treedef, leaves))
        leaves_out, tree = jax.tree_util.tree_flatten(out)
        out_tree.append(tree)
        return leaves_out

    closed = jax.make_jaxpr(flat_fn)(*flat)
    outs = eval_jaxpr(closed.jaxpr, list(closed.consts), *flat, pool=pool, kernels=kernels)
    return jax.tree_util.tree_unflatten(out_tree[0], outs)


def apply(adapter: Any, params: Any, x: jax.Array) -> jax.Array:
    """``adapter.apply(params, x)`` (a :class:`jaxlrp._tracing.Adapter`) through :func:`call`."""
    return call(adapter.apply, params, x)
