"""Robustness metrics: does the explanation stay put when the input barely moves?

Each needs an explainer ``explain(model, x, target) -> (B, H, W) or (B, H, W, C)``
(any jaxlrp explainer, or a user function that is pure and jit-compatible).
All ``nr_samples`` noisy copies of the batch are explained in batched calls
(``chunk_size`` samples per call through ``jax.lax.map``), never one example at
a time. Returns scores (B,); lower is more robust.

The default ``chunk_size=1`` explains one noisy copy of the batch per call, at the
batch size the caller chose. One call over all copies (``chunk_size=None``) is
slower per image on CPU: VGG16 at batch 8 with 10 samples, AvgSensitivity takes
58.6 s in one call of 80 images and 32.0 s in ten calls of 8 (2 cores, 2026-12-01).

Quantus 0.6.0 conventions kept: uniform noise U(-lower_bound, lower_bound) on
every channel value (or U(lower_bound, upper_bound) when ``upper_bound`` is
given), Gaussian N(0, perturb_std) for the Lipschitz estimate; the explanation
of the perturbed input uses the original labels; by default samples where the
prediction changes are kept (``return_nan_when_prediction_changes=False``).
Explanations are compared as flat vectors after the metric's preprocessing.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp._validation import check_range
from jaxlrp.errors import ExplanationError
from jaxlrp.metrics._common import (
    batched_apply,
    check_choice,
    check_chunk,
    check_inputs,
    check_int,
    check_key,
    check_labels,
    flat,
    model_handle,
    prepare_maps,
    preprocess,
)
from jaxlrp.metrics.base import metric
from jaxlrp.typing import Explainer


def _norm(v: jax.Array, kind: str) -> jax.Array:
    peak = jnp.max(jnp.abs(v), axis=-1)
    if kind == "linf":
        return peak
    # scaled by the peak so that v * v cannot overflow (maps of 1e30) nor underflow
    ok = peak >= jnp.finfo(v.dtype).tiny
    safe = jnp.where(ok, peak, 1.0)[..., None]
    return jnp.where(ok, peak * jnp.sqrt(jnp.sum(jnp.square(v / safe), axis=-1)), 0.0)


def _check_explain(explain: Any) -> Explainer:
    if not callable(explain):
        raise ExplanationError(
            "explain: expected a function explain(model, x, target) -> maps, got "
            f"{type(explain).__name__}"
        )
    return explain


def _noise(key, shape, perturb, lower_bound, upper_bound, perturb_std, dtype):
    if perturb == "uniform":
        lo, hi = (-lower_bound, lower_bound) if upper_bound is None else (lower_bound, upper_bound)
        return jax.random.uniform(key, shape, dtype, lo, hi)
    return perturb_std * jax.random.normal(key, shape, dtype)


def _sensitivity(model, x, y, a, explain, key, *, nr_samples, lower_bound, upper_bound, norm,
                 perturb, perturb_std, normalise, abs, noise, chunk_size,  # noqa: A002
                 return_nan_when_prediction_changes, kind, over_samples):
    x = check_inputs(x)
    fwd, params, k = model_handle(model, x)
    b = x.shape[0]
    y = check_labels(y, b, k)
    a4 = prepare_maps(a, x)
    explain = _check_explain(explain)
    check_choice(norm, "norm", ("fro", "l2", "linf"))
    check_choice(perturb, "perturb", ("uniform", "gaussian"))
    chunk = check_chunk(chunk_size)
    if noise is None:
        nr_samples = check_int(nr_samples, "nr_samples")
        lower_bound = check_range(lower_bound, "lower_bound", 0.0, float("inf"))
        if upper_bound is not None:
            upper_bound = check_range(upper_bound, "upper_bound", lower_bound, float("inf"))
            if upper_bound <= lower_bound:
                raise ExplanationError(
                    f"upper_bound: expected a value > lower_bound={lower_bound}, got {upper_bound}"
                )
        key = check_key(key)
        noise = _noise(key, (nr_samples,) + x.shape, perturb, lower_bound, upper_bound,
                       perturb_std, x.dtype)
    else:
        noise = jnp.asarray(noise, x.dtype)
        if noise.ndim != 5 or noise.shape[1:] != x.shape:
            raise ExplanationError(
                f"noise: expected shape (nr_samples, *x.shape) = (S, {tuple(x.shape)}), got "
                f"{tuple(noise.shape)}"
            )
    return _sens_core(fwd, params, x, y, a4, noise, explain=explain, norm=norm,
                      normalise=normalise, abs=abs, chunk=chunk,
                      nan_changed=return_nan_when_prediction_changes, kind=kind,
                      over_samples=over_samples)


@functools.partial(jax.jit, static_argnames=("fwd", "explain", "norm", "normalise", "abs",
                                             "chunk", "nan_changed", "kind", "over_samples"))
def _sens_core(fwd, params, x, y, a4, noise, *, explain, norm, normalise, abs,  # noqa: A002
               chunk, nan_changed, kind, over_samples):
    s, b = noise.shape[:2]
    model = fwd.model(params)
    xp = (x[None] + noise).reshape((s * b,) + x.shape[1:])
    yy = jnp.tile(y, s)

    def explain_batch(xs_ys):
        xs, ys = xs_ys
        m = prepare_maps(explain(model, xs, ys), xs, "explain(model, x, target)")
        return preprocess(m, normalise, abs)

    n = chunk * b if chunk else None
    if n is None or n >= s * b:
        ap = explain_batch((xp, yy))
    else:
        ap = _chunked_pairs(explain_batch, xp, yy, n)
    if ap.shape[1:] != a4.shape[1:]:
        raise ExplanationError(
            f"a: has shape {tuple(a4.shape)} per batch but explain returns maps of shape "
            f"{tuple(ap.shape[1:])}; pass a of the explainer's output shape"
        )
    a0 = flat(preprocess(a4, normalise, abs))
    ap = flat(ap).reshape(s, b, -1)
    if kind == "sensitivity":
        num = _norm(a0[None] - ap, norm)
        den = _norm(a0, norm)[None]
        vals = num / jnp.where(den == 0, 1.0, den)
    else:  # Lipschitz: ||a - a'||_2 / (||x - x'||_2 + 1e-10)
        num = _norm(a0[None] - ap, "l2")
        den = _norm(flat(noise.reshape((s * b,) + x.shape[1:])).reshape(s, b, -1), "l2")
        vals = num / (den + 1e-10)
    if nan_changed:
        p0 = jnp.argmax(fwd.apply(params, x), -1)
        pp = jnp.argmax(batched_apply(lambda z: fwd.apply(params, z), xp, n), -1).reshape(s, b)
        vals = jnp.where(pp == p0[None], vals, jnp.nan)
    return (jnp.mean if over_samples == "mean" else jnp.max)(vals, axis=0)


def _chunked_pairs(f, xs, ys, n):
    total = xs.shape[0]
    m = -(-total // n)
    pad = m * n - total
    if pad:
        xs = jnp.concatenate([xs, jnp.repeat(xs[:1], pad, 0)])
        ys = jnp.concatenate([ys, jnp.repeat(ys[:1], pad, 0)])
    out = jax.lax.map(f, (xs.reshape((m, n) + xs.shape[1:]), ys.reshape(m, n)))
    return out.reshape((m * n,) + out.shape[2:])[:total]


@metric("AvgSensitivity", category="Robustness", higher_is_better=False)
def avg_sensitivity(
    model: Any, x: Any, y: Any, a: Any, explain: Explainer, key: Any = None, *,
    nr_samples: int = 10, lower_bound: float = 0.2, upper_bound: float | None = None,
    norm: str = "fro", perturb: str = "uniform", perturb_std: float = 0.1,
    normalise: bool = False, abs: bool = False, noise: Any = None,  # noqa: A002
    chunk_size: int | None = 1, return_nan_when_prediction_changes: bool = False,
) -> jax.Array:
    """Average sensitivity (Yeh et al. 2019; Quantus ``AvgSensitivity``) -> (B,).

    Mean over ``nr_samples`` noisy inputs x' of ||a(x) - a(x')|| / ||a(x)||
    (``norm`` "fro"/"l2" or "linf" on the flat map). Where ||a(x)|| = 0 the
    ratio is undefined (inf or NaN in Quantus); jaxlrp returns the unnormalised
    ||a(x) - a(x')|| there. Lower is better.

    Args:
      explain: ``explain(model, x, target) -> maps``; ``a`` must have its output shape.
      key: jax.random key for the noise (unused when ``noise`` is given).
      noise: optional (nr_samples, B, H, W, C) additive noise, instead of drawing it.
      chunk_size: noisy samples explained per call (each B images; default 1: one noisy
        copy of the batch per call, the fastest on CPU, see the module docstring); None:
        all at once.
      return_nan_when_prediction_changes: score NaN for an example when any noisy sample
        changes its predicted class (Quantus's semantics).
    """
    return _sensitivity(model, x, y, a, explain, key, nr_samples=nr_samples,
                        lower_bound=lower_bound, upper_bound=upper_bound, norm=norm,
                        perturb=perturb, perturb_std=perturb_std, normalise=normalise, abs=abs,
                        noise=noise, chunk_size=chunk_size,
                        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
                        kind="sensitivity", over_samples="mean")


@metric("MaxSensitivity", category="Robustness", higher_is_better=False)
def max_sensitivity(
    model: Any, x: Any, y: Any, a: Any, explain: Explainer, key: Any = None, *,
    nr_samples: int = 10, lower_bound: float = 0.2, upper_bound: float | None = None,
    norm: str = "fro", perturb: str = "uniform", perturb_std: float = 0.1,
    normalise: bool = False, abs: bool = False, noise: Any = None,  # noqa: A002
    chunk_size: int | None = 1, return_nan_when_prediction_changes: bool = False,
) -> jax.Array:
    """Maximum sensitivity (Yeh et al. 2019; Quantus ``MaxSensitivity``) -> (B,).

    As :func:`avg_sensitivity` with the maximum over samples instead of the mean.
    """
    return _sensitivity(model, x, y, a, explain, key, nr_samples=nr_samples,
                        lower_bound=lower_bound, upper_bound=upper_bound, norm=norm,
                        perturb=perturb, perturb_std=perturb_std, normalise=normalise, abs=abs,
                        noise=noise, chunk_size=chunk_size,
                        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
                        kind="sensitivity", over_samples="max")


@metric("LocalLipschitzEstimate", category="Robustness", higher_is_better=False)
def local_lipschitz_estimate(
    model: Any, x: Any, y: Any, a: Any, explain: Explainer, key: Any = None, *,
    nr_samples: int = 10, perturb_std: float = 0.1, normalise: bool = True,
    abs: bool = False, noise: Any = None, chunk_size: int | None = 1,  # noqa: A002
    return_nan_when_prediction_changes: bool = False,
) -> jax.Array:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018; Quantus ``LocalLipschitzEstimate``).

    Max over ``nr_samples`` Gaussian perturbations x' = x + N(0, perturb_std) of
    ||a(x) - a(x')||_2 / (||x - x'||_2 + 1e-10) -> (B,). Lower is better.
    """
    return _sensitivity(model, x, y, a, explain, key, nr_samples=nr_samples, lower_bound=0.0,
                        upper_bound=None, norm="l2", perturb="gaussian", perturb_std=perturb_std,
                        normalise=normalise, abs=abs, noise=noise, chunk_size=chunk_size,
                        return_nan_when_prediction_changes=return_nan_when_prediction_changes,
                        kind="lipschitz", over_samples="max")
