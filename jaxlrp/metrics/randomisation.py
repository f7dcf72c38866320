"""Randomisation metrics: does the explanation depend on the model and the class?

Each needs an explainer ``explain(model, x, target) -> (B, H, W) or (B, H, W, C)``.
Maps are summed over channels (the channel reduction of ``quantus.explain``),
then preprocessed as in Quantus (normalise by max |a| per example, ``abs``
per metric). Similarities: "ssim" (2-D SSIM over the (H, W) map, 7x7 uniform
windows, data range = max - min over both maps), "ssim_flat" (SSIM of the
flattened maps as 1-D signals: what Quantus 0.6.0's ``ssim`` computes, since it
reshapes maps to (B, H*W) before calling skimage), "pearson", "spearman".
Lower similarity is better (the explanation changes when it should).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlrp.errors import ExplanationError
from jaxlrp.metrics._common import (
    Forward,
    check_choice,
    check_inputs,
    check_int,
    check_key,
    check_labels,
    check_ssim_size,
    model_handle,
    prepare_maps,
    preprocess,
    similarity_fn,
)
from jaxlrp.metrics.base import metric
from jaxlrp.metrics.robustness import Explainer, _check_explain
from jaxlrp.validation import is_concrete

_EXPLAIN = "explain(model, x, target)"


def _as_2d(m: jax.Array, x: jax.Array, normalise: bool, abs: bool,  # noqa: A002
           name: str) -> jax.Array:
    return preprocess(prepare_maps(m, x, name).sum(-1), normalise, abs)


@metric("RandomLogit", category="Randomisation", higher_is_better=False)
def random_logit(
    model: Any, x: Any, y: Any, a: Any, explain: Explainer, key: Any = None, *,
    num_classes: int | None = None, similarity: str = "ssim", normalise: bool = True,
    abs: bool = False, y_off: Any = None,  # noqa: A002
) -> jax.Array:
    """Random logit test (Sixt et al. 2020; Quantus ``RandomLogit``) -> (B,).

    Similarity between the explanation of class y and that of a class drawn
    uniformly from the other ``num_classes`` - 1 classes. Lower is better.

    Deviation from Quantus 0.6.0: the default "ssim" is the 2-D SSIM of the
    maps, as in Sixt et al.; Quantus computes SSIM of the flattened maps (1-D
    windows of 7 consecutive pixels of a row), available as "ssim_flat".

    Args:
      num_classes: classes to draw from (default: the model's number of outputs).
      key: jax.random key for the off-class draw (unused when ``y_off`` is given).
      y_off: optional (B,) classes to compare with, each different from y.
    """
    x = check_inputs(x)
    fwd, params, k = model_handle(model, x)
    b, h, w, _ = x.shape
    y = check_labels(y, b, k)
    explain = _check_explain(explain)
    sim = check_choice(similarity, "similarity", ("ssim", "ssim_flat", "pearson", "spearman"))
    check_ssim_size(sim, h, w)
    if sim == "ssim_flat" and h * w < 7:
        raise ExplanationError(f"similarity: 'ssim_flat' needs at least 7 pixels, got {h * w}")
    nc = k if num_classes is None else check_int(num_classes, "num_classes", 2, k)
    if nc < 2:
        raise ExplanationError(f"num_classes: need at least 2 classes, the model has {k}")
    a2 = _as_2d(a, x, normalise, abs, "a")
    if y_off is None:
        key = check_key(key)
        r = jax.random.randint(key, (b,), 0, nc - 1)
        y_off = (r + (r >= y)).astype(jnp.int32)
    else:
        y_off = check_labels(y_off, b, k, "y_off")
        if is_concrete(y_off) and is_concrete(y) and bool((np.asarray(y_off) == np.asarray(y))
                                                          .any()):
            raise ExplanationError("y_off: each off-class must differ from y")
    return _rl_core(fwd, params, x, y_off, a2, explain=explain, sim=sim, normalise=normalise,
                    abs=abs)


@functools.partial(jax.jit, static_argnames=("fwd", "explain", "sim", "normalise", "abs"))
def _rl_core(fwd, params, x, y_off, a2, *, explain, sim, normalise, abs):  # noqa: A002
    ap = _as_2d(explain(fwd.model(params), x, y_off), x, normalise, abs, _EXPLAIN)
    return similarity_fn(sim)(a2, ap)


# ----------------------------------------------------------------------------- MPRT


def _leaves(fwd: Forward, params: Any):
    """(treedef, [(module_path, is_param, leaf)]) for NNX state or Linen variables."""
    is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)
    out = []
    for path, leaf in flat:
        keys = [str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path]
        if fwd.adapter.kind == "nnx":
            out.append(("/".join(keys[:-1]), isinstance(leaf, nnx.Param), leaf))
        else:
            out.append(("/".join(keys[1:-1]), bool(keys) and keys[0] == "params", leaf))
    return treedef, out


def parameter_layers(model: Any, x: Any) -> list[str]:
    """Paths of the submodules that own parameters, output layer first (top-down order)."""
    x = check_inputs(x)
    fwd, params, _ = model_handle(model, x)
    return _layer_order(fwd, params, x)


def _layer_order(fwd: Forward, params: Any, x: jax.Array) -> list[str]:
    _, leaves = _leaves(fwd, params)
    owners = []
    for path, is_param, _ in leaves:
        if is_param and path not in owners:
            owners.append(path)
    calls = [i.path for i in fwd.adapter.layers(x)]
    ordered = [p for p in dict.fromkeys(calls) if p in owners]
    ordered += [p for p in owners if p not in ordered]
    return ordered[::-1]


def _value(leaf):
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _randomised(fwd: Forward, params: Any, layers: list[str], key: jax.Array,
                order: list[str]) -> Any:
    treedef, leaves = _leaves(fwd, params)
    new = []
    for i, (path, is_param, leaf) in enumerate(leaves):
        if is_param and path in layers:
            v = _value(leaf)
            k = jax.random.fold_in(jax.random.fold_in(key, order.index(path)), i)
            mu, sd = jnp.mean(v), jnp.std(v)
            r = (mu + sd * jax.random.normal(k, v.shape, jnp.float32)).astype(v.dtype)
            leaf = leaf.replace(value=r) if isinstance(leaf, nnx.Variable) else r
        new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


@metric("MPRT", category="Randomisation", higher_is_better=False,
        aliases=("ModelParameterRandomisation",), summary=functools.partial(jnp.mean, axis=1))
def model_parameter_randomisation(
    model: Any, x: Any, y: Any, explain: Explainer, key: Any = None, *, a: Any = None,
    mode: str = "cascading", similarity: str = "spearman", normalise: bool = True,
    abs: bool = True,  # noqa: A002
) -> jax.Array:
    """Model parameter randomisation test (Adebayo et al. 2018; Quantus ``MPRT``) -> (B, L).

    Layers owning parameters (see :func:`parameter_layers`) are visited from the
    output layer down; at step l the parameters of layer l are replaced by random
    draws, cumulatively ("cascading": layers 0..l randomised) or alone
    ("independent"), and column l is the similarity between the original
    explanation ``a`` (computed with ``explain`` when None) and the explanation
    of the randomised model. Each parameter array is redrawn from a normal
    distribution with the array's own mean and standard deviation (Quantus calls
    torch's ``reset_parameters``, i.e. the layer's initialiser); batch statistics
    are kept. The model passed in is never modified.
    """
    x = check_inputs(x)
    fwd, params, k = model_handle(model, x)
    b, h, w, _ = x.shape
    y = check_labels(y, b, k)
    explain = _check_explain(explain)
    check_choice(mode, "mode", ("cascading", "independent"))
    sim = check_choice(similarity, "similarity", ("ssim", "ssim_flat", "pearson", "spearman"))
    check_ssim_size(sim, h, w)
    key = check_key(key)
    order = _layer_order(fwd, params, x)
    if not order:
        raise ExplanationError("model: has no parameters to randomise")
    if a is None:
        a2 = _mprt_explain(fwd, params, x, y, explain=explain, normalise=normalise, abs=abs)
    else:
        a2 = _as_2d(a, x, normalise, abs, "a")
    cols = []
    for l_ix in range(len(order)):
        chosen = order[: l_ix + 1] if mode == "cascading" else [order[l_ix]]
        rp = _randomised(fwd, params, chosen, key, order)
        ap = _mprt_explain(fwd, rp, x, y, explain=explain, normalise=normalise, abs=abs)
        cols.append(similarity_fn(sim)(a2, ap))
    return jnp.stack(cols, axis=1)


@functools.partial(jax.jit, static_argnames=("fwd", "explain", "normalise", "abs"))
def _mprt_explain(fwd, params, x, y, *, explain, normalise, abs):  # noqa: A002
    return _as_2d(explain(fwd.model(params), x, y), x, normalise, abs, _EXPLAIN)
