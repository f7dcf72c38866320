"""Sanity checks and reliability of the ranking for ``reproduce_paper.py``.

* :func:`sanity_metrics`: the model-parameter-randomisation metrics of the sanity rows
  (MPRT cascading and independent, Adebayo et al. 2018; eMPRT and sMPRT, Hedström et al.
  2024), built from :mod:`jaxlrp.metrics`.
* The "minor perturbation" (noise-resilience) half of MetaQuantus (Hedström et al., TMLR
  2023): :func:`perturbed_model` (multiplicative Gaussian noise on every weight),
  :func:`perturbed_data` (additive Gaussian noise on the images), and
  :func:`reliability_stats`, which compares the scores of the perturbed runs with the
  unperturbed ones: how often the ranking of the explainers survives, Kendall's tau, and
  MetaQuantus's IAC_NR / IEC_NR.

Everything here works on plain dicts ``{explainer: {metric: per-image list}}`` so that
``reproduce_paper.py --from-json`` recomputes it from the stored scores.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp.metrics import (
    Metric,
    efficient_mprt,
    make_metric,
    model_parameter_randomisation,
    smooth_mprt,
)

Scores = Mapping[str, Mapping[str, Sequence[float]]]

# ----------------------------------------------------------------------------- sanity rows


def sanity_metrics(smprt_samples: int = 10) -> list[Metric]:
    """MPRT (cascading, top-down), MPRT (independent), eMPRT and sMPRT, as metrics.

    MPRT and sMPRT give one similarity per randomisation step (Spearman of |maps|); the
    score is their mean over the steps (Quantus's ``return_average_correlation``). Lower is
    better for both (the explanation changes when the weights are randomised). eMPRT is the
    relative rise of the map's histogram entropy after randomising every layer; higher is
    better. sMPRT averages ``smprt_samples`` noisy explanations per model (Quantus: 50).
    """
    mean_over_steps = functools.partial(jnp.mean, axis=1)
    return [
        make_metric(model_parameter_randomisation, "MPRT", category="Randomisation",
                    higher_is_better=False, summary=mean_over_steps, mode="cascading"),
        make_metric(model_parameter_randomisation, "MPRT-independent",
                    category="Randomisation", higher_is_better=False,
                    summary=mean_over_steps, mode="independent"),
        make_metric(efficient_mprt, "EfficientMPRT", category="Randomisation",
                    higher_is_better=True),
        make_metric(smooth_mprt, "SmoothMPRT", category="Randomisation",
                    higher_is_better=False, summary=mean_over_steps,
                    nr_samples=int(smprt_samples)),
    ]


# ----------------------------------------------------------------------------- perturbations


def perturbed_model(model: Any, x: Any, std: float, key: jax.Array) -> Any:
    """A copy of ``model`` whose every parameter array w is w * (1 + std * N(0, 1)).

    MetaQuantus's multiplicative model noise; batch statistics are kept. ``x`` is an
    example batch (to trace the model). The model passed in is not modified.
    """
    from jaxlrp.metrics._common import model_handle
    from jaxlrp.metrics._randomisation import _layer_order, _randomised

    fwd, params, _ = model_handle(model, jnp.asarray(x))
    order = _layer_order(fwd, params, jnp.asarray(x))

    def draw(layer: str, name: str, v: jax.Array, k: jax.Array) -> jax.Array:
        return v * (1 + std * jax.random.normal(k, v.shape, jnp.float32))

    return fwd.model(_randomised(fwd, params, order, key, order, draw))


def perturbed_data(data: Any, std: float, seed: int) -> Any:
    """The dataset with additive Gaussian noise N(0, std^2) on every pixel (no clipping)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(data.images.shape).astype(data.images.dtype)
    return dataclasses.replace(data, images=data.images + std * noise)


def predictions(model: Any, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """The model's argmax class per image."""
    from jaxlrp._tracing import as_adapter

    adapter = as_adapter(model)
    f = jax.jit(adapter.apply)
    out = [np.asarray(f(adapter.params, jnp.asarray(images[i:i + batch_size]))).argmax(-1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


# ----------------------------------------------------------------------------- statistics


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score vectors (ties counted as in ``scipy.stats.kendalltau``).

    NaN when either vector is constant.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau: expected two vectors of one length, got {a.shape}, "
                         f"{b.shape}")
    i, j = np.triu_indices(a.size, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = i.size
    ta, tb = int(np.sum(da == 0)), int(np.sum(db == 0))
    den = math.sqrt((n0 - ta) * (n0 - tb))
    return float(np.sum(da * db) / den) if den > 0 else float("nan")


def ranking(means: Mapping[str, float], higher_is_better: bool) -> list[str]:
    """Explainer names, best first (ties keep the given order); NaN means rank last."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(means, key=lambda e: (not np.isfinite(means[e]),
                                        sign * means[e] if np.isfinite(means[e]) else 0.0))


def _mean(v: Sequence[float]) -> float:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _mean_se(v: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float(
        "nan")


def iac_p(q: np.ndarray, q_hat: np.ndarray) -> float:
    """MetaQuantus's intra-consistency under minor perturbation for one explainer and draw:
    the p-value of the two-sided Wilcoxon signed-rank test (zero_method "zsplit") of the
    paired scores (1 when every pair is equal, NaN with fewer than 2 finite pairs)."""
    from scipy import stats

    q, q_hat = np.asarray(q, np.float64), np.asarray(q_hat, np.float64)
    ok = np.isfinite(q) & np.isfinite(q_hat)
    q, q_hat = q[ok], q_hat[ok]
    if q.size < 2:
        return float("nan")
    if np.all(q == q_hat):
        return 1.0
    return float(stats.wilcoxon(q, q_hat, alternative="two-sided", zero_method="zsplit").pvalue)


def iec_agreement(q_star: np.ndarray, q_hat: np.ndarray) -> float:
    """MetaQuantus's inter-consistency under minor perturbation for one draw.

    q_star, q_hat: (explainers, images) unperturbed / perturbed scores. Per image, the
    explainers are sorted by score (argsort); the result is the fraction of (image,
    position) pairs whose explainer is the same in both orders. Images with a non-finite
    score are left out.
    """
    q_star, q_hat = np.asarray(q_star, np.float64), np.asarray(q_hat, np.float64)
    ok = np.isfinite(q_star).all(0) & np.isfinite(q_hat).all(0)
    if not ok.any():
        return float("nan")
    r_star = np.argsort(q_star[:, ok], axis=0, kind="stable")
    r_hat = np.argsort(q_hat[:, ok], axis=0, kind="stable")
    return float(np.mean(r_star == r_hat))


def reliability_stats(rel: Mapping[str, Any]) -> dict:
    """Statistics of one reliability record (see ``reproduce_paper.reliability_run``).

    For each test (model / input noise) and each metric (one per category): the
    unperturbed ranking of the explainers by mean score; per draw the perturbed ranking;
    ``same_ranking`` (fraction of draws whose ranking equals the unperturbed one);
    Kendall's tau between perturbed and unperturbed means (mean ± SE over draws); IAC_NR
    (mean over draws and explainers of :func:`iac_p`, on the images whose predicted class
    the perturbation left unchanged; SE over the per-draw means) and IEC_NR (mean ± SE
    over draws of :func:`iec_agreement` on those images). Higher is more reliable for all.
    """
    explainers = list(rel["explainers"])
    ref = rel["reference"]
    out: dict[str, Any] = {}
    for tname, test in rel["tests"].items():
        rows = []
        for m in rel["metrics"]:
            name, hib = m["name"], m["higher_is_better"]
            ref_means = {e: _mean(ref[e][name]) for e in explainers}
            r0 = ranking(ref_means, hib)
            ranks, taus, iacs, iecs = [], [], [], []
            for draw, kept in zip(test["scores"], test["kept"], strict=True):
                means = {e: _mean(draw[e][name]) for e in explainers}
                ranks.append(ranking(means, hib))
                taus.append(kendall_tau([ref_means[e] for e in explainers],
                                        [means[e] for e in explainers]))
                k = np.asarray(kept, bool)
                q_star = np.array([np.asarray(ref[e][name], np.float64)[k] for e in explainers])
                q_hat = np.array([np.asarray(draw[e][name], np.float64)[k] for e in explainers])
                iacs.append(_mean([iac_p(a, b) for a, b in zip(q_star, q_hat, strict=True)]))
                iecs.append(iec_agreement(q_star, q_hat))
            tau, tau_se = _mean_se(taus)
            iac, iac_se = _mean_se(iacs)
            iec, iec_se = _mean_se(iecs)
            rows.append({
                "category": m["category"], "metric": name, "higher_is_better": hib,
                "reference_means": ref_means, "reference_ranking": r0,
                "rankings": ranks, "draws": len(ranks),
                "same_ranking": (float(np.mean([r == r0 for r in ranks])) if ranks
                                 else float("nan")),
                "same_best": (float(np.mean([r[0] == r0[0] for r in ranks])) if ranks
                              else float("nan")),
                "kendall_tau": tau, "kendall_tau_se": tau_se, "kendall_taus": taus,
                "iac_nr": iac, "iac_nr_se": iac_se, "iec_nr": iec, "iec_nr_se": iec_se,
            })
        acc = test["accuracy"]
        changes = [a - acc["unperturbed"] for a in acc["perturbed"]]
        ch, ch_se = _mean_se(changes)
        kept = [float(np.mean(k)) if len(k) else float("nan") for k in test["kept"]]
        out[tname] = {"rows": rows, "accuracy_change": ch, "accuracy_change_se": ch_se,
                      "accuracy_unperturbed": acc["unperturbed"],
                      "accuracy_n": acc["n_images"],
                      "unchanged_predictions": _mean(kept)}
    return out
