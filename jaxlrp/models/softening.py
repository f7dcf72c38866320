"""Smooth twins of ReLU networks: ReLU -> softplus(beta * x) / beta.

A ReLU network has zero second derivative almost everywhere, so the gradient of a
gradient-based explanation w.r.t. the input carries no information about how the
explanation's backward pass changes (Dombrowski et al. 2019). :func:`soften` returns
a copy of a model whose ReLUs are replaced by the softplus with sharpness ``beta``::

    soft_relu(x) = softplus(beta * x) / beta        -> relu(x) as beta -> inf
    soft_relu6(x) = soft_relu(x) - soft_relu(x - 6) -> relu6(x)

The reference models call ``nnx.relu`` / ``nn.relu`` / ``jax.nn.relu`` *functionally*
inside ``__call__``, so there is no submodule to swap. Instead the copy's class is a
subclass of the original whose ``__call__`` rebinds those module attributes
(``jax.nn.relu``, ``jax.nn.relu6`` and their re-exports in ``flax.nnx`` and
``flax.linen``) to the soft versions while Python runs the call, i.e. while JAX traces
it. Under ``jax.jit`` the patch is active exactly during tracing, which is when it
matters. Module paths and the parameter layout are unchanged, so layer names,
LRP composites and checkpoints of the original apply to the softened copy.

Limitations: code that bound ``relu`` at import time (``from jax.nn import relu``)
is not affected; the patch is process-global while a softened model is being traced
(serialised by a lock, but other threads tracing at the same moment see it too).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from jaxlrp.errors import ExplanationError
from jaxlrp.tracing import LinenModel

__all__ = ["soft_relu", "soft_relu6", "soften", "softened_beta"]

_LOCK = threading.RLock()
_ORIGINAL_RELU = jax.nn.relu
_ORIGINAL_RELU6 = jax.nn.relu6


def soft_relu(x: jax.Array, beta: float) -> jax.Array:
    """``softplus(beta * x) / beta`` elementwise (any shape)."""
    return jax.nn.softplus(beta * x) / beta


def soft_relu6(x: jax.Array, beta: float) -> jax.Array:
    """``soft_relu(x) - soft_relu(x - 6)``: a smooth ReLU6 (any shape)."""
    return soft_relu(x, beta) - soft_relu(x - 6.0, beta)


def _namespaces() -> list[Any]:
    """Modules whose ``relu``/``relu6`` attributes model code may look up at call time."""
    import flax.linen.activation as linen_act
    import flax.nnx.nn.activations as nnx_act

    mods = [jax.nn, nnx, nn, linen_act, nnx_act]
    out: list[Any] = []
    for m in mods:
        if m not in out:
            out.append(m)
    return out


@contextlib.contextmanager
def _softplus_relu(beta: float) -> Iterator[None]:
    """Rebind ReLU/ReLU6 to their soft versions for the duration of the block."""
    relu = functools.partial(soft_relu, beta=beta)
    relu6 = functools.partial(soft_relu6, beta=beta)
    with _LOCK:
        saved: list[tuple[Any, str, Any]] = []
        for mod in _namespaces():
            for name, fn, orig in (("relu", relu, _ORIGINAL_RELU),
                                   ("relu6", relu6, _ORIGINAL_RELU6)):
                cur = getattr(mod, name, None)
                # Patch only names that refer to the jax function (or an active patch).
                if cur is orig or getattr(cur, "func", None) in (soft_relu, soft_relu6):
                    saved.append((mod, name, cur))
                    setattr(mod, name, fn)
        try:
            yield
        finally:
            for mod, name, cur in reversed(saved):
                setattr(mod, name, cur)


def _check_beta(beta: Any) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        b = float("nan")
    if not (b > 0 and b < float("inf")) or isinstance(beta, bool):
        raise ExplanationError(f"beta: expected a finite float > 0, got {beta!r}")
    return b


@functools.cache
def _soft_class(cls: type, beta: float) -> type:
    """A subclass of ``cls`` whose ``__call__`` runs the original with soft ReLUs."""
    orig_call: Callable = cls.__call__

    def __call__(self, *args, **kwargs):
        with _softplus_relu(beta):
            return orig_call(self, *args, **kwargs)

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
    return cls.__dict__.get("_jaxlrp_soften_base", cls)


def softened_beta(model: Any) -> float | None:
    """The ``beta`` of a model returned by :func:`soften`, or None for an ordinary model."""
    module = model.module if isinstance(model, LinenModel) else model
    if isinstance(model, tuple) and len(model) == 2:
        module = model[0]
    return type(module).__dict__.get("_jaxlrp_soften_beta")


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
