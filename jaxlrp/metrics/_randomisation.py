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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlrp._validation import is_concrete
from jaxlrp.errors import ExplanationError
from jaxlrp.metrics._common import (
    Forward,
    check_choice,
    check_inputs,
    check_int,
    check_key,
    check_labels,
    check_ssim_size,
    flat,
    model_handle,
    prepare_maps,
    preprocess,
    similarity_fn,
)
from jaxlrp.metrics._robustness import Explainer, _check_explain
from jaxlrp.metrics.base import metric

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


Draw = Callable[[str, str, jax.Array, jax.Array], Any]


def _normal_like(layer: str, name: str, v: jax.Array, key: jax.Array) -> jax.Array:
    """The default draw: normal with the array's own mean and standard deviation."""
    mu, sd = jnp.mean(v), jnp.std(v)
    return mu + sd * jax.random.normal(key, v.shape, jnp.float32)


def _leaf_names(fwd: Forward, params: Any) -> list[str]:
    is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
    flat_, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)
    return [str(getattr(p[-1], "key", getattr(p[-1], "idx", getattr(p[-1], "name", p[-1]))))
            if p else "" for p, _ in flat_]


def _randomised(fwd: Forward, params: Any, layers: list[str], key: jax.Array,
                order: list[str], draw: Draw | None = None) -> Any:
    treedef, leaves = _leaves(fwd, params)
    names = _leaf_names(fwd, params)
    draw = _normal_like if draw is None else draw
    new = []
    for i, (path, is_param, leaf) in enumerate(leaves):
        if is_param and path in layers:
            v = _value(leaf)
            k = jax.random.fold_in(jax.random.fold_in(key, order.index(path)), i)
            r = jnp.asarray(draw(path, names[i], v, k))
            if r.shape != v.shape:
                raise ExplanationError(f"draw: expected an array of shape {v.shape} for "
                                       f"{path}/{names[i]}, got {r.shape}")
            r = r.astype(v.dtype)
            leaf = leaf.replace(value=r) if isinstance(leaf, nnx.Variable) else r
        new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


@metric("MPRT", category="Randomisation", higher_is_better=False,
        aliases=("ModelParameterRandomisation",), summary=functools.partial(jnp.mean, axis=1))
def model_parameter_randomisation(
    model: Any, x: Any, y: Any, explain: Explainer, key: Any = None, *, a: Any = None,
    mode: str = "cascading", similarity: str = "spearman", normalise: bool = True,
    abs: bool = True, draw: Draw | None = None,  # noqa: A002
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
    are kept. The model passed in is never modified. ``draw(layer, name, value, key)``
    replaces that default draw (e.g. a layer's own initialiser, or given weights).
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
        rp = _randomised(fwd, params, chosen, key, order, draw)
        ap = _mprt_explain(fwd, rp, x, y, explain=explain, normalise=normalise, abs=abs)
        cols.append(similarity_fn(sim)(a2, ap))
    return jnp.stack(cols, axis=1)


@functools.partial(jax.jit, static_argnames=("fwd", "explain", "normalise", "abs"))
def _mprt_explain(fwd, params, x, y, *, explain, normalise, abs):  # noqa: A002
    return _as_2d(explain(fwd.model(params), x, y), x, normalise, abs, _EXPLAIN)


# ----------------------------------------------------------------------------- eMPRT, sMPRT

LAYER_ORDERS = ("bottom_up", "top_down", "independent")


def _steps(order: list[str], layer_order: str) -> list[list[str]]:
    """The layers randomised at each step; ``order`` is top-down (output layer first)."""
    if layer_order == "independent":
        return [[p] for p in order]
    seq = order[::-1] if layer_order == "bottom_up" else order
    return [seq[: i + 1] for i in range(len(seq))]


def histogram_entropy(a: jax.Array, n_bins: int = 100) -> jax.Array:
    """Entropy (nats) of the histogram of each map's values -> (B,).

    a: (B, ...). ``n_bins`` equal-width bins between the map's min and max, the last bin
    closed, exactly as ``numpy.histogram(a, bins=n_bins)`` assigns values (with its edge
    corrections); then ``scipy.stats.entropy`` of the counts: -sum p log p, p = count / N.
    A constant map has entropy 0. This is Quantus's ``discrete_entropy``.
    """
    v = flat(a)
    lo = v.min(axis=1, keepdims=True)
    hi = v.max(axis=1, keepdims=True)
    const = hi == lo
    lo = jnp.where(const, lo - 0.5, lo)
    hi = jnp.where(const, hi + 0.5, hi)
    step = (hi - lo) / n_bins
    idx = jnp.floor((v - lo) * (n_bins / (hi - lo))).astype(jnp.int32)
    idx = jnp.clip(idx, 0, n_bins - 1)

    def edge(i):  # numpy.linspace's edges: lo + i * step, the last one exactly hi
        return jnp.where(i >= n_bins, hi, lo + i * step)

    idx = jnp.where(v < edge(idx), idx - 1, idx)
    idx = jnp.where((v >= edge(idx + 1)) & (idx != n_bins - 1), idx + 1, idx)
    counts = jax.vmap(lambda r: jnp.bincount(r, length=n_bins))(idx)
    p = counts / v.shape[1]
    return jax.scipy.special.entr(p).sum(axis=1)


def efficient_mprt(
    model: Any, x: Any, y: Any, explain: Explainer, key: Any = None, *, n_bins: int = 100,
    abs: bool = False, draw: Draw | None = None,  # noqa: A002
) -> jax.Array:
    """Efficient MPRT (eMPRT; Hedström et al. 2024, "Sanity checks revisited"; Quantus
    ``EfficientMPRT``) -> (B,).

    Randomise every parameter layer (the end of Quantus's default cascade; the draws are
    those of :func:`model_parameter_randomisation`, or ``draw``), then score the relative
    rise of the explanation's complexity::

        (H(e_random) - H(e)) / H(e),   H = histogram_entropy(map, n_bins)

    Maps are summed over channels (optionally ``abs``). The histogram spans each map's own
    min..max, so the score is blind to the map's scale (Quantus's optional normalisation
    changes nothing). Higher is better: an explanation that depends on the weights gets
    noisier (higher entropy) when they are random. A map of constant value (H = 0) gives
    inf or NaN, as in Quantus.
    """
    x = check_inputs(x)
    fwd, params, k = model_handle(model, x)
    y = check_labels(y, x.shape[0], k)
    explain = _check_explain(explain)
    n_bins = check_int(n_bins, "n_bins", 1)
    key = check_key(key)
    order = _layer_order(fwd, params, x)
    if not order:
        raise ExplanationError("model: has no parameters to randomise")
    rp = _randomised(fwd, params, order, key, order, draw)
    h0 = _emprt_entropy(fwd, params, x, y, explain=explain, n_bins=n_bins, abs=abs)
    h1 = _emprt_entropy(fwd, rp, x, y, explain=explain, n_bins=n_bins, abs=abs)
    return (h1 - h0) / h0


@functools.partial(jax.jit, static_argnames=("fwd", "explain", "n_bins", "abs"))
def _emprt_entropy(fwd, params, x, y, *, explain, n_bins, abs):  # noqa: A002
    m = _as_2d(explain(fwd.model(params), x, y), x, False, abs, _EXPLAIN)
    return histogram_entropy(m, n_bins)


def _second_moment_normalise(a: jax.Array) -> jax.Array:
    """a / sqrt(mean(a^2)) per example (Quantus's sMPRT/eMPRT normaliser, per example)."""
    rms = jnp.sqrt(jnp.mean(flat(a) ** 2, axis=1)).reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.where(rms > 0, a / jnp.where(rms > 0, rms, 1.0), a)


def smooth_mprt(
    model: Any, x: Any, y: Any, explain: Explainer, key: Any = None, *,
    nr_samples: int = 50, noise_magnitude: float = 0.1, layer_order: str = "bottom_up",
    similarity: str = "spearman", normalise: bool = True, abs: bool = True,  # noqa: A002
    noise: Any = None, draw: Draw | None = None,
) -> jax.Array:
    """Smooth MPRT (sMPRT; Hedström et al. 2024; Quantus ``SmoothMPRT``) -> (B, L).

    MPRT on denoised explanations: each explanation (of the original model and of every
    randomised one) is the mean over ``nr_samples`` explanations of ``x + eps``, with
    ``eps ~ N(0, std^2)``, ``std = noise_magnitude * (max(x_b) - min(x_b))`` per example,
    the last sample noise-free (eps = 0), as in Quantus. Layers are randomised
    cumulatively from the input (``bottom_up``, the paper's recommendation), from the
    output (``top_down``) or one at a time (``independent``). Column l is the similarity
    of the smoothed original map and the smoothed map after step l; lower is better.
    Maps are summed over channels, divided by their root mean square per example
    (Quantus divides by that of the whole batch, which changes nothing for rank or
    Pearson correlation) and, with ``abs``, made absolute.

    Args:
      key: jax.random key for the noise and the weight draws (a fresh noise draw for each
        model, as in Quantus).
      noise: optional standard-normal draws (L + 1, nr_samples - 1, B, H, W, C); slice 0
        smooths the original model, slice l + 1 the model after step l. Replaces the key's
        noise (the key still draws the weights unless ``draw`` is given).
      draw: see :func:`model_parameter_randomisation`.
    Cost: (L + 1) * nr_samples explanations of the batch.
    """
    x = check_inputs(x)
    fwd, params, k = model_handle(model, x)
    b, h, w, c = x.shape
    y = check_labels(y, b, k)
    explain = _check_explain(explain)
    nr_samples = check_int(nr_samples, "nr_samples", 1)
    try:
        mag = float(noise_magnitude)
    except (TypeError, ValueError) as e:
        raise ExplanationError(f"noise_magnitude: expected a number >= 0, got "
                               f"{noise_magnitude!r}") from e
    if not mag >= 0:
        raise ExplanationError(f"noise_magnitude: expected a number >= 0, got {noise_magnitude!r}")
    check_choice(layer_order, "layer_order", LAYER_ORDERS)
    sim = check_choice(similarity, "similarity", ("ssim", "ssim_flat", "pearson", "spearman"))
    check_ssim_size(sim, h, w)
    key = check_key(key)
    order = _layer_order(fwd, params, x)
    if not order:
        raise ExplanationError("model: has no parameters to randomise")
    steps = _steps(order, layer_order)
    if noise is not None:
        noise = jnp.asarray(noise, x.dtype)
        want = (len(steps) + 1, nr_samples - 1) + tuple(x.shape)
        if noise.shape != want:
            raise ExplanationError(f"noise: expected shape (L + 1, nr_samples - 1, B, H, W, C) "
                                   f"= {want}, got {tuple(noise.shape)}")
    std = mag * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    wkey, nkey = jax.random.split(key)

    def smoothed(p, m):
        # explicit draws, or one key per sample (each draw made inside the scan: memory
        # stays at one batch of noise)
        z = (noise[m] if noise is not None else
             jax.random.split(jax.random.fold_in(nkey, m), max(nr_samples - 1, 1)))
        return _smprt_explain(fwd, p, x, y, z, std, explain=explain, normalise=normalise,
                              abs=abs, nr_samples=nr_samples, from_keys=noise is None)

    a0 = smoothed(params, 0)
    cols = []
    for i, chosen in enumerate(steps):
        rp = _randomised(fwd, params, chosen, wkey, order, draw)
        cols.append(similarity_fn(sim)(a0, smoothed(rp, i + 1)))
    return jnp.stack(cols, axis=1)


@functools.partial(jax.jit, static_argnames=("fwd", "explain", "normalise", "abs",
                                             "nr_samples", "from_keys"))
def _smprt_explain(fwd, params, x, y, z, std, *, explain, normalise, abs,  # noqa: A002
                   nr_samples, from_keys):
    model = fwd.model(params)
    sb = std.reshape(-1, 1, 1, 1)

    def one(acc, zi):
        if from_keys:
            zi = jax.random.normal(zi, x.shape, x.dtype)
        return acc + prepare_maps(explain(model, x + zi * sb, y), x, _EXPLAIN).sum(-1), None

    acc = prepare_maps(explain(model, x, y), x, _EXPLAIN).sum(-1)
    if nr_samples > 1:
        acc, _ = jax.lax.scan(one, acc, z)
    m = acc / nr_samples
    if normalise:
        m = _second_moment_normalise(m)
    return jnp.abs(m) if abs else m
