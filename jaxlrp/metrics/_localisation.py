"""Localisation metrics: does the attribution fall on the object?

Each takes maps ``a`` (B, H, W) or (B, H, W, C) and ground-truth ``masks``
(B, H, W) bool, and returns scores (B,), higher is better. Maps with channels
are summed over channels first (the channel reduction of ``quantus.explain``;
Quantus's localisation metrics accept single-channel maps only). Preprocessing
defaults follow Quantus (normalise by max |a|; ``abs`` per metric).

A mask that is empty for some example raises :class:`ExplanationError` when the
masks are concrete; under tracing that example scores NaN (as in Quantus).

Ties: where Quantus ranks pixels with ``np.argsort`` (unstable: tied pixels are
ordered arbitrarily), :func:`relevance_rank_accuracy` and
:func:`top_k_intersection` give tied pixels at the cut-off their expected share,
so the score is defined and deterministic (a constant map scores |mask| / n);
without ties at the cut-off this is exactly Quantus's number.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp.errors import ExplanationError
from jaxlrp.metrics._common import (
    _safe_div,
    as_maps,
    average_ranks,
    check_int,
    flat,
    prepare_masks,
    preprocess,
)
from jaxlrp.metrics.base import metric


def _inputs(a: Any, masks: Any, normalise: bool, abs: bool) -> tuple[jax.Array, jax.Array]:  # noqa: A002
    a4 = as_maps(a)
    m = prepare_masks(masks, a4.shape[:3])
    v = flat(preprocess(a4.sum(-1), normalise, abs))
    return v, m


def _nan_if_empty(score: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.where(m.any(-1), score, jnp.nan)


@metric("PointingGame", category="Localisation", higher_is_better=True)
def pointing_game(a: Any, masks: Any, *, normalise: bool = True,
                  abs: bool = False) -> jax.Array:  # noqa: A002
    """1.0 if a pixel of maximal attribution lies in the mask, else 0.0 (Zhang et al. 2018).

    With several maximal pixels, any one inside counts as a hit (as Quantus).
    """
    v, m = _inputs(a, masks, normalise, abs)
    hit = jnp.any(m & (v == v.max(-1, keepdims=True)), axis=-1)
    return _nan_if_empty(hit.astype(v.dtype), m)


@metric("AttributionLocalisation", category="Localisation", higher_is_better=True)
def attribution_localisation(a: Any, masks: Any, *, positive_attributions: bool = False,
                             normalise: bool = True, abs: bool = True) -> jax.Array:  # noqa: A002
    """Share of attribution inside the mask, inside / (total + 1e-9) (Kohlbrenner et al. 2020).

    As in Quantus, a ratio above 1 (possible only with abs=False and negative
    attributions) is NaN. An all-zero map scores 0.
    """
    v, m = _inputs(a, masks, normalise, abs)
    if positive_attributions:
        v = jnp.clip(v, 0, None)
    r = (v * m).sum(-1) / (v.sum(-1) + 1e-9)
    r = jnp.where(r > 1, jnp.nan, r)
    return _nan_if_empty(r, m)


@metric("RelevanceMassAccuracy", category="Localisation", higher_is_better=True)
def relevance_mass_accuracy(a: Any, masks: Any, *, normalise: bool = True,
                            abs: bool = False) -> jax.Array:  # noqa: A002
    """Relevance inside the mask over total relevance (Arras et al. 2022).

    An all-zero map (0/0, NaN in Quantus) scores 0.
    """
    v, m = _inputs(a, masks, normalise, abs)
    return _nan_if_empty(_safe_div((v * m).sum(-1), v.sum(-1)), m)


def _top_share(v: jax.Array, m: jax.Array, k: jax.Array) -> jax.Array:
    """Expected number of mask pixels among the k highest values (ties split evenly)."""
    s = -jnp.sort(-v, axis=-1)
    kk = jnp.clip(k, 1, v.shape[-1])
    t = jnp.take_along_axis(s, (kk - 1)[:, None], axis=1)  # k-th largest value
    above = v > t
    tied = v == t
    n_above = above.sum(-1)
    n_tied = tied.sum(-1)
    m_above = (above & m).sum(-1)
    m_tied = (tied & m).sum(-1)
    share = (kk - n_above).astype(v.dtype) * m_tied / jnp.maximum(n_tied, 1)
    return m_above + share


@metric("RelevanceRankAccuracy", category="Localisation", higher_is_better=True)
def relevance_rank_accuracy(a: Any, masks: Any, *, normalise: bool = True,
                            abs: bool = False) -> jax.Array:  # noqa: A002
    """Fraction of the |mask| highest-ranked pixels that lie in the mask (Arras et al. 2022)."""
    v, m = _inputs(a, masks, normalise, abs)
    k = m.sum(-1)
    return _nan_if_empty(_top_share(v, m, k) / jnp.maximum(k, 1), m)


@metric("TopKIntersection", category="Localisation", higher_is_better=True)
def top_k_intersection(a: Any, masks: Any, *, k: int = 1000, concept_influence: bool = False,
                       normalise: bool = True, abs: bool = False) -> jax.Array:  # noqa: A002
    """Fraction of the k highest-ranked pixels inside the mask (Theiner et al. 2021).

    ``k`` must be smaller than the number of pixels (as Quantus). With
    ``concept_influence`` the fraction is multiplied by n / |mask|.
    """
    v, m = _inputs(a, masks, normalise, abs)
    n = v.shape[-1]
    k = check_int(k, "k", 1, n - 1)
    tki = _top_share(v, m, jnp.full((v.shape[0],), k)) / k
    if concept_influence:
        tki = tki * n / jnp.maximum(m.sum(-1), 1)
    return _nan_if_empty(tki, m)


@metric("AUC", category="Localisation", higher_is_better=True)
def auc(a: Any, masks: Any, *, normalise: bool = True, abs: bool = False) -> jax.Array:  # noqa: A002
    """Area under the ROC curve of the map as a detector of mask pixels (Fawcett 2006).

    Computed as the Mann-Whitney statistic with tied scores counted 1/2, which
    equals sklearn's ``auc(*roc_curve(mask, a)[:2])`` used by Quantus. A mask
    covering the whole image has no negatives: it raises when concrete (NaN in
    Quantus) and scores NaN under tracing.
    """
    v, m = _inputs(a, masks, normalise, abs)
    full = m.all(-1)
    if not isinstance(full, jax.core.Tracer) and bool(full.any()):
        bad = [int(i) for i in jnp.flatnonzero(full)[:10]]
        raise ExplanationError(
            f"masks: the mask of example(s) {bad} covers the whole image; the ROC AUC needs "
            "pixels outside the mask too"
        )
    n = v.shape[-1]
    r = average_ranks(v) - (n + 1) / 2  # centred ranks keep float32 sums small
    p = m.sum(-1).astype(v.dtype)
    q = n - p
    # U = sum of positive ranks - p(p+1)/2 = sum(centred) + p q / 2.
    score = 0.5 + (r * m).sum(-1) / jnp.maximum(p * q, 1)
    return jnp.where(full, jnp.nan, _nan_if_empty(score, m))
