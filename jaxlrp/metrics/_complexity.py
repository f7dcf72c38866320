"""Complexity metrics: how concentrated an attribution map is.

Each takes maps ``a`` (B, H, W) or (B, H, W, C) and returns scores (B,). Maps
are flattened as given (channels included, as Quantus does); by default each
map is divided by its max |a| and made absolute (Quantus's defaults
normalise=True, abs=True), see :mod:`jaxlrp.metrics._common`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp.metrics._common import as_maps, flat, preprocess
from jaxlrp.metrics.base import metric


@metric("Sparseness", category="Complexity", higher_is_better=True)
def sparseness(a: Any, *, normalise: bool = True, abs: bool = True) -> jax.Array:  # noqa: A002
    """Gini index of each map (Chalasani et al. 2020; Quantus ``Sparseness``) -> (B,).

    G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)) over the n values sorted
    ascending, after adding 1e-7 to every value (as Quantus does, so that an
    all-zero map is defined: G = 0). A one-hot map gives (n - 1) / n (up to the
    1e-7 offset), a constant map 0. Higher is sparser.
    """
    v = flat(preprocess(as_maps(a), normalise, abs)) + 1e-7
    n = v.shape[-1]
    v = jnp.sort(v, axis=-1)
    i = jnp.arange(1, n + 1, dtype=v.dtype)
    return ((2 * i - n - 1) * v).sum(-1) / (n * v.sum(-1))


@metric("Complexity", category="Complexity", higher_is_better=False)
def complexity(a: Any, *, normalise: bool = True, abs: bool = True) -> jax.Array:  # noqa: A002
    """Entropy of the map's fractional contributions (Bhatt et al. 2020) -> (B,).

    p_i = a_i / sum_j |a_j|, H = -sum_i p_i log(p_i + 1e-12) (Quantus
    ``Complexity``). A uniform map gives log(n). An all-zero map, for which p is
    undefined (NaN in Quantus), scores 0. Lower is less complex.
    """
    v = flat(preprocess(as_maps(a), normalise, abs))
    tot = jnp.abs(v).sum(-1, keepdims=True)
    p = v / jnp.where(tot == 0, 1.0, tot)
    return -(p * jnp.log(p + 1e-12)).sum(-1)


@metric("EffectiveComplexity", category="Complexity", higher_is_better=False)
def effective_complexity(a: Any, *, eps: float = 1e-5, normalise: bool = True,
                         abs: bool = True) -> jax.Array:  # noqa: A002
    """Number of features with attribution above ``eps`` (Nguyen & Martinez 2020) -> (B,) int32.

    Lower is less complex.
    """
    v = flat(preprocess(as_maps(a), normalise, abs))
    return jnp.sum(v > eps, axis=-1).astype(jnp.int32)
