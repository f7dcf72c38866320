"""Smooth twins of ReLU networks: ReLU -> softplus(beta * x) / beta.

A ReLU network has zero second derivative almost everywhere, so the gradient of a
gradient-based explanation w.r.t. the input carries no information about how the
explanation's backward pass changes (Dombrowski et al. 2019). :func:`soften` returns
a copy of a model whose ReLUs are replaced by the softplus with sharpness ``beta``::

    soft_relu(x) = softplus(beta * x) / beta        -> relu(x) as beta -> inf
    soft_relu6(x) = soft_relu(x) - soft_relu(x - 6) -> relu6(x)

The reference models call ``nnx.relu`` / ``nn.relu`` / ``jax.nn.relu`` *functionally*
inside ``__call__``, so there is no submodule to swap. Instead the copy's class is a
subclass of the original whose ``__call__`` traces the original call to a jaxpr and
evaluates that jaxpr with every ``jax.nn.relu`` / ``jax.nn.relu6`` equation (a
``custom_jvp_call`` of jax's ``relu``) replaced by its soft version. Nothing global is
touched: ``jax.nn``, flax and the original classes stay as they are, for every thread.
Equations keep their module paths (``name_stack``), hooks of the explainers run on the
outer values (:func:`jaxlrp._tracing.hook_filter`), and the parameter layout is unchanged,
so layer names, LRP composites and checkpoints of the original apply to the softened copy.

ReLUs are found wherever the model calls jax's ``relu`` (also through
``from jax.nn import relu``), inside ``jax.jit``-ed helpers too; a ReLU inside a
``lax.scan``/``cond``/``while`` body or a ``custom_vjp`` function is left as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.extend import core as jcore
from jax.extend import source_info_util as siu

from jaxlrp._tracing import LinenModel, hook_filter, rescope
from jaxlrp.errors import ExplanationError

__all__ = ["soft_relu", "soft_relu6", "soften", "softened_beta"]


def soft_relu(x: jax.Array, beta: float) -> jax.Array:
    """``softplus(beta * x) / beta`` elementwise (any shape)."""
    return jax.nn.softplus(beta * x) / beta


def soft_relu6(x: jax.Array, beta: float) -> jax.Array:
    """``soft_relu(x) - soft_relu(x - 6)``: a smooth ReLU6 (any shape)."""
    return soft_relu(x, beta) - soft_relu(x - 6.0, beta)


_SOFT = {"relu": soft_relu, "relu6": soft_relu6}
_CALLS = ("pjit", "jit", "closed_call", "core_call")

# An identity marking a submodule output inside the inner trace: the real hook runs on
# the outer value when the softened jaxpr is evaluated (never lowered or differentiated).
_HOOK_POINT = jcore.Primitive("jaxlrp_hook_point")
_HOOK_POINT.multiple_results = True
_HOOK_POINT.def_abstract_eval(lambda *avals, index: list(avals))


def _relu_kind(eqn: Any) -> str | None:
    """``"relu"``/``"relu6"`` for a ``custom_jvp_call`` of jax's ReLU, else None."""
    if eqn.primitive.name != "custom_jvp_call":
        return None
    inner = eqn.params["call_jaxpr"].jaxpr.eqns
    if len(inner) == 1 and inner[0].primitive.name in _CALLS:
        name = inner[0].params.get("name")
        if name in _SOFT:
            return name
    return None


def _sub_jaxpr(eqn: Any) -> Any:
    if eqn.primitive.name in _CALLS:
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub
        if isinstance(sub, jcore.Jaxpr):
            return jcore.ClosedJaxpr(sub, ())
    return None


def _needs_rewrite(jaxpr: Any) -> bool:
    for e in jaxpr.eqns:
        if e.primitive is _HOOK_POINT or _relu_kind(e) is not None:
            return True
        sub = _sub_jaxpr(e)
        if sub is not None and _needs_rewrite(sub.jaxpr):
            return True
    return False


def _evaluate(jaxpr: Any, consts: Any, args: Any, beta: float, table: list) -> list:
    """Evaluate ``jaxpr`` in the caller's trace with soft ReLUs and the deferred hooks.

    Every equation is bound under its own source info and ``name_stack`` (appended to
    the current one), as ``jax.core.eval_jaxpr`` does.
    """
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for e in jaxpr.eqns:
        ins = [read(v) for v in e.invars]
        stack = siu.current_name_stack() + e.source_info.name_stack
        with siu.user_context(e.source_info.traceback, name_stack=stack), e.ctx.manager:
            kind = _relu_kind(e)
            sub = _sub_jaxpr(e)
            if e.primitive is _HOOK_POINT:
                outs = _run_hook(table[e.params["index"]], ins)
            elif kind is not None:
                outs = [_SOFT[kind](ins[e.params["num_consts"]], beta)]
            elif sub is not None and _needs_rewrite(sub.jaxpr):
                outs = _evaluate(sub.jaxpr, sub.consts, ins, beta, table)
            else:
                outs = e.primitive.bind(*ins, **e.primitive.get_bind_params(e.params))
                if not e.primitive.multiple_results:
                    outs = [outs]
        env.update(zip(e.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _is_value(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def _defer(table: list, hook: Callable | None) -> Callable | None:
    """The hook used inside the inner trace: mark the output, remember the real hook."""
    if hook is None:
        return None

    def deferred(path: str, module: Any, out: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(out)
        mask = [_is_value(v) for v in leaves]
        table.append((hook, path, module, treedef, leaves, mask))
        marked = iter(_HOOK_POINT.bind(*[v for v, m in zip(leaves, mask, strict=True) if m],
                                       index=len(table) - 1))
        full = [next(marked) if m else v for v, m in zip(leaves, mask, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, full)

    return deferred


def _run_hook(entry: tuple, ins: list) -> list:
    hook, path, module, treedef, leaves, mask = entry
    it = iter(ins)
    out = jax.tree_util.tree_unflatten(
        treedef, [next(it) if m else v for v, m in zip(leaves, mask, strict=True)])
    new = jax.tree_util.tree_leaves(hook(path, module, out))
    return [v for v, m in zip(new, mask, strict=True) if m]


def _soft_apply(fn: Callable, beta: float, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)`` with soft ReLUs: trace it, then evaluate the jaxpr."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    mask = [_is_value(v) for v in leaves]
    arrays = [v for v, m in zip(leaves, mask, strict=True) if m]

    def inner(*xs: Any) -> Any:
        it = iter(xs)
        a, k = jax.tree_util.tree_unflatten(
            treedef, [next(it) if m else v for v, m in zip(leaves, mask, strict=True)])
        return fn(*a, **k)

    table: list = []
    with hook_filter(functools.partial(_defer, table)):
        closed, shape = jax.make_jaxpr(inner, return_shape=True)(*arrays)
    outs = _evaluate(closed.jaxpr, closed.consts, arrays, beta, table)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)


def _check_beta(beta: Any) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        b = float("nan")
    if not (b > 0 and b < float("inf")) or isinstance(beta, bool):
        raise ExplanationError(f"beta: expected a finite float > 0, got {beta!r}")
    return b


def _soft_apply_nnx(module: nnx.Module, call: Callable, beta: float, args: tuple,
                    kwargs: dict) -> Any:
    """:func:`_soft_apply` for an NNX module: its state goes through the jaxpr, so that
    updates made by the call (BatchNorm statistics in training mode) are applied."""
    graphdef, state = nnx.split(module)

    def fn(st: Any, *a: Any, **k: Any) -> Any:
        m = nnx.merge(graphdef, st)
        with rescope(m):
            out = call(m, *a, **k)
        return out, nnx.state(m)

    out, new_state = _soft_apply(fn, beta, (state, *args), kwargs)
    old, new = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new_state)
    if any(a is not b for a, b in zip(old, new, strict=True)):  # the call updated state
        nnx.update(module, new_state)
    return out


@functools.cache
def _soft_class(cls: type, beta: float) -> type:
    """A subclass of ``cls`` whose ``__call__`` runs the original with soft ReLUs."""
    orig_call: Callable = cls.__call__

    def __call__(self, *args, **kwargs):
        if isinstance(self, nnx.Module):
            return _soft_apply_nnx(self, orig_call, beta, args, kwargs)
        return _soft_apply(functools.partial(orig_call, self), beta, args, kwargs)

    name = f"Softened{cls.__name__}"
    attrs = {
        "__call__": __call__,
        "__module__": cls.__module__,
        "__qualname__": name,
        "_jaxlrp_soften_beta": beta,
        "_jaxlrp_soften_base": cls,
    }
    return type(name, (cls,), attrs)


def _base(cls: type) -> type:
    return getattr(cls, "_jaxlrp_soften_base", cls)


def softened_beta(model: Any) -> float | None:
    """The ``beta`` of a model returned by :func:`soften`, or None for an ordinary model."""
    module = model.module if isinstance(model, LinenModel) else model
    if isinstance(model, tuple) and len(model) == 2:
        module = model[0]
    return getattr(type(module), "_jaxlrp_soften_beta", None)


def soften(model: Any, beta: float = 10.0) -> Any:
    """A copy of ``model`` with every ReLU (and ReLU6) replaced by ``softplus(beta x) / beta``.

    Args:
      model: an NNX module, a ``(linen_module, variables)`` pair or ``jaxlrp.linen(...)``.
      beta: sharpness > 0; the softened logits converge to the original ones as
        ``beta -> inf`` (pointwise gap at most ``log(2) / beta`` per ReLU).
    Returns:
      The same kind of object (NNX module copy; Linen pair / :class:`jaxlrp.LinenModel`
      with the same variables) computing the smooth function, with the same module
      paths and parameters. The input model is not modified. Softening a softened
      model replaces its ``beta``.

    Example (second order through an explanation)::

        soft = jaxlrp.models.soften(model, beta=10.0)
        f = lambda x: jaxlrp.cam.gradcam(soft, x, 3).sum()
        jax.grad(f)(x)    # non-zero terms from the backward pass
    """
    beta = _check_beta(beta)
    if isinstance(model, nnx.Module):
        copy = nnx.clone(model)
        copy.__class__ = _soft_class(_base(type(model)), beta)
        return copy
    if isinstance(model, LinenModel):
        return LinenModel(_soft_linen(model.module, beta), model.variables, model.apply_kwargs)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        return (_soft_linen(model[0], beta), model[1])
    raise ExplanationError(
        f"model: expected a flax.nnx.Module, a (linen.Module, variables) pair or "
        f"jaxlrp.linen(...), got {type(model).__name__}"
    )


def _soft_linen(module: nn.Module, beta: float) -> nn.Module:
    """An unbound copy of a Linen module whose class is the softened subclass."""
    import dataclasses

    cls = _soft_class(_base(type(module)), beta)
    fields = {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.init and f.name not in ("parent", "name")
    }
    return cls(**fields)
