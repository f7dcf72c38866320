"""Sweeps and ablation of the hybrid (arXiv 2405.12175) against the five default metrics.

Sweeps: one parameter of the hybrid varies at a time, the others at the paper's
defaults (threshold 0.2, 5x5 kernel, sigma 4, signed channel mean):

  threshold  0, 0.1, 0.2, 0.3, 0.4, 0.5   (denoising of the CAM)
  sigma      0 (no blur), 1, 2, 4         (Gaussian blur, 5x5 kernel)
  reduce     every value of jaxlrp._hybrid.REDUCTIONS (channel reduction of LRP)

"No blur" is the library's 1x1 kernel (``ksize=1``, whose single weight is 1): the hybrid
rejects sigma <= 0, and ``gaussian_blur``'s sigma 0 means OpenCV's sigma derived from the
kernel size, not "no blur".

Ablation: what each step contributes: Grad-CAM++ alone, LRP (channel-reduced) alone,
CAM x LRP without denoising (and without blur), denoised CAM x LRP without blur, the blur
of LRP alone, the blur of the CAM alone, and the full hybrid. Every variant is
``jaxlrp._hybrid.combine_parts`` with a step made neutral (a CAM or relevance of ones,
threshold 0, a 1x1 kernel), so each ends with the hybrid's own normalisation and clip to
[0, 1]. The markdown answers, from the paired Sparseness scores, whether the hybrid's
Complexity win comes from the blur or from the multiplication.

Every variant is scored with ``jaxlrp.metrics.default_suite()`` (Faithfulness,
Robustness, Complexity, Localisation, Randomisation) on the embedded test split
(``jaxlrp.data.embedded("test", n=N, seed=0)``, with its object masks), target = the true
label, with the key scheme of ``jaxlrp.evaluate`` (batch i, metric j: the same random
draws for every variant, so differences are paired). The CAM and the LRP relevance of a
batch are computed once, and every variant's maps are built from them; the Robustness
and Randomisation metrics re-explain perturbed inputs / other classes with each
variant's own explainer (for the sweeps: ``jaxlrp.explainers.get("hybrid", ...)``).

Statistics: per variant and metric, mean ± standard error and n; per variant, the
paired difference to the default hybrid (mean ± SE, paired t-test, Holm-adjusted within
each sweep; ``paired`` and ``holm`` of ``benchmarks/reproduce_paper.py``).

Models (``--models``): ``vgg`` (``jaxlrp.models.default_model()``), ``convnext`` and
``vit`` (``jaxlrp.models.convnext_model()`` / ``vit_model()``, which need
``jaxlrp/assets/reference_{convnext,vit}.msgpack``, written by
``python benchmarks/train_reference_models.py convnext|vit``). Default: every model whose
weights exist.

Outputs (in ``benchmarks/results/``, or ``$JAXLRP_BENCH_RESULTS``): ``sweep.json`` (every
per-image score and the summaries), ``sweep.md`` (tables), ``sweep_<model>.png`` (metric vs
parameter, one panel per category, SE error bars) and ``sweep_ablation_<model>.png``.

Usage::

    python benchmarks/sweep.py                       # 200 images, every model with weights
    python benchmarks/sweep.py --quick               # 16 images (smoke test)
    python benchmarks/sweep.py --models vgg vit --n 500 --batch-size 50
    python benchmarks/sweep.py --from-json benchmarks/results/sweep.json
        # rebuild sweep.md and the figures from the stored scores, no model is run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402
from reproduce_paper import ALPHA, _clean, fmt, fmt_p, holm, paired  # noqa: E402

import jaxlrp  # noqa: E402
from jaxlrp._hybrid import REDUCTIONS, combine_parts  # noqa: E402
from jaxlrp.evaluation import MetricInfo, Results  # noqa: E402
from jaxlrp.metrics import default_suite  # noqa: E402

DEFAULTS: dict[str, Any] = {"threshold": 0.2, "reduce": "mean", "ksize": 5, "sigma": 4.0}

#: sweep name -> (parameter, values); sigma 0 means no blur (a 1x1 kernel)
SWEEPS: dict[str, tuple[str, tuple]] = {
    "threshold": ("threshold", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)),
    "sigma": ("sigma", (0.0, 1.0, 2.0, 4.0)),
    "reduce": ("reduce", REDUCTIONS),
}

MODELS = ("vgg", "convnext", "vit")

SIGMA_WHY = (
    "Why sigma = 4: the paper's public re-implementation calls "
    "`cv2.GaussianBlur(x, (5, 5), cv2.BORDER_DEFAULT)`; the third positional argument of "
    "`GaussianBlur` is sigmaX, and `cv2.BORDER_DEFAULT` == 4, so the border constant became "
    "the blur's width. jaxlrp keeps 4 as the faithful default (on a 5x5 kernel it is close "
    "to a box filter); the sigma sweep shows what other widths do."
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One map of the sweep or the ablation: ``combine_parts`` with steps made neutral.

    ``cam=False`` uses a CAM of ones (no CAM), ``lrp=False`` a relevance of ones (no LRP);
    ``threshold=0`` is no denoising, ``ksize=1`` no blur. Hashable: equal variants share
    compiled metrics. Calling it explains a batch: ``(model, x, target) -> (B, H, W)``.
    """

    cam: bool = True
    lrp: bool = True
    threshold: float = DEFAULTS["threshold"]
    reduce: str = DEFAULTS["reduce"]
    ksize: int = DEFAULTS["ksize"]
    sigma: float = DEFAULTS["sigma"]

    @property
    def id(self) -> str:  # noqa: A003 - the variant's key in the results
        parts = [("cam" if self.cam else "ones") + "*" + ("lrp" if self.lrp else "ones"),
                 f"t={self.threshold:g}", f"reduce={self.reduce}",
                 "no blur" if self.ksize == 1 else f"k={self.ksize} s={self.sigma:g}"]
        return " ".join(parts)

    @property
    def options(self) -> dict[str, Any]:
        """The hybrid's options that differ from its defaults."""
        opts = {"threshold": self.threshold, "reduce": self.reduce, "ksize": self.ksize,
                "sigma": self.sigma}
        return {k: v for k, v in opts.items() if v != DEFAULTS[k]}

    @property
    def explainer(self) -> Any:
        """The explainer the Robustness and Randomisation metrics call: the library's
        ``hybrid`` explainer when both parts are used, else this variant."""
        if self.cam and self.lrp:
            return jaxlrp.explainers.get("hybrid", **self.options)
        return self

    def maps(self, cam: jax.Array, relevance: jax.Array) -> jax.Array:
        """(B, H, W) maps from the CAM (B, H, W) and the input relevance (B, H, W, C)."""
        ones = jnp.ones(cam.shape, cam.dtype)
        return combine_parts(cam if self.cam else ones, relevance if self.lrp else ones,
                             threshold=self.threshold, reduce=self.reduce, ksize=self.ksize,
                             sigma=self.sigma).hybrid

    def __call__(self, model: Any, x: jax.Array, target: Any) -> jax.Array:
        cam, rel = parts(model, x, target, cam=self.cam, lrp=self.lrp)
        return self.maps(cam, rel)


def parts(model: Any, x: jax.Array, target: Any, *, cam: bool = True,
          lrp: bool = True) -> tuple[jax.Array, jax.Array]:
    """The hybrid's two parts: Grad-CAM++ (B, H, W) in [0, 1] (the hybrid's CAM) and the
    LRP input relevance (B, H, W, C) (paper composite); a part not asked for is ones."""
    ones = jnp.ones(x.shape[:3], x.dtype)
    c = jaxlrp.explainers.get("gradcam++")(model, x, target) if cam else ones
    r = jaxlrp.lrp(model, x, target) if lrp else ones
    return c, r


@functools.partial(jax.jit, static_argnums=0)
def _maps(v: Variant, cam: jax.Array, rel: jax.Array) -> jax.Array:
    return v.maps(cam, rel)


def sweep_variant(param: str, value: Any) -> Variant:
    """The default hybrid with ``param`` set to ``value`` (sigma 0: no blur, a 1x1 kernel)."""
    if param == "sigma" and value == 0:
        return Variant(ksize=1)
    return dataclasses.replace(Variant(), **{param: value})


#: ablation: (key, label, variant); cam=False / lrp=False use threshold 0 (nothing to denoise)
ABLATION: tuple[tuple[str, str, Variant], ...] = (
    ("cam", "Grad-CAM++ alone", Variant(lrp=False, threshold=0.0, ksize=1)),
    ("lrp", "LRP (channel mean) alone", Variant(cam=False, threshold=0.0, ksize=1)),
    ("cam_x_lrp", "CAM x LRP (no denoising, no blur)", Variant(threshold=0.0, ksize=1)),
    ("denoised_x_lrp", "denoised CAM x LRP (no blur)", Variant(ksize=1)),
    ("blur_lrp", "blur of LRP alone", Variant(cam=False, threshold=0.0)),
    ("blur_cam", "blur of Grad-CAM++ alone", Variant(lrp=False, threshold=0.0)),
    ("hybrid", "full hybrid", Variant()),
)


def plan(sweeps: Sequence[str], ablation: bool,
         values: dict[str, Sequence] | None = None) -> dict:
    """The sweeps and ablation to run as JSON-ready data, with every distinct variant."""
    values = values or {}
    out: dict[str, Any] = {"sweeps": {}, "ablation": None, "variants": {}}
    for name in sweeps:
        param, vals = SWEEPS[name]
        vals = tuple(values.get(name, vals))
        rows = [{"value": v, "variant": sweep_variant(param, v).id} for v in vals]
        out["sweeps"][name] = {"param": param, "default": DEFAULTS[param], "rows": rows}
        for v in vals:
            var = sweep_variant(param, v)
            out["variants"][var.id] = dataclasses.asdict(var)
    if ablation:
        out["ablation"] = [{"key": k, "label": lab, "variant": v.id} for k, lab, v in ABLATION]
        for _, _, v in ABLATION:
            out["variants"][v.id] = dataclasses.asdict(v)
    out["variants"].setdefault(Variant().id, dataclasses.asdict(Variant()))
    return out


# ----------------------------------------------------------------------------- scoring


def score(model: Any, data: Any, variants: Iterable[Variant], *, batch_size: int,
          key: int = 0, progress: bool = True) -> Results:
    """Per-image scores of every variant with ``default_suite()``: one :class:`Results`
    whose explainers are the variants' ids. Key scheme and targets as ``jaxlrp.evaluate``
    (target = the true label; batch i, metric j gets ``fold_in(fold_in(key, i), j)``)."""
    variants = list(dict.fromkeys(variants))
    suite = default_suite()
    root = jax.random.key(int(key))
    need_cam = any(v.cam for v in variants)
    need_lrp = any(v.lrp for v in variants)
    scores = {v.id: {m.name: [] for m in suite} for v in variants}
    targets, skipped = [], {}
    for index, (images, labels, masks) in enumerate(data.batches(batch_size)):
        t0 = time.perf_counter()
        x, t = jnp.asarray(images), jnp.asarray(labels)
        cam, rel = parts(model, x, t, cam=need_cam, lrp=need_lrp)
        bkey = jax.random.fold_in(root, index)
        mj = None if masks is None else jnp.asarray(masks)
        for v in variants:
            a = _maps(v, cam, rel)
            for j, m in enumerate(suite):
                if m.needs_masks and mj is None:
                    skipped[m.name] = "the data has no ground-truth masks"
                    scores[v.id][m.name].append(np.full(len(labels), np.nan))
                    continue
                s = m(model, x, t, a, explain=v.explainer if m.needs_explainer else None,
                      masks=mj, key=jax.random.fold_in(bkey, j))
                scores[v.id][m.name].append(np.asarray(s, np.float64))
        targets.append(np.asarray(labels, np.int64))
        if progress:
            print(f"  batch {index}: {len(labels)} images, {len(variants)} variants, "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    keep = [m for m in suite if m.name not in skipped]
    return Results(tuple(v.id for v in variants),
                   tuple(MetricInfo(m.name, m.category, m.higher_is_better) for m in keep),
                   {v.id: {m.name: np.concatenate(scores[v.id][m.name]) for m in keep}
                    for v in variants},
                   np.concatenate(targets), [], skipped, {})


# ----------------------------------------------------------------------------- statistics


def summarise(res: Results, spec: dict) -> dict:
    """Per sweep / ablation row: mean, SE, n per metric and the paired difference to the
    default hybrid (Holm-adjusted within the sweep); plus the blur-vs-multiplication steps."""
    default = Variant().id
    out: dict[str, Any] = {"sweeps": {}, "ablation": None, "steps": None}
    groups = {name: s["rows"] for name, s in spec["sweeps"].items()}
    if spec["ablation"]:
        groups["ablation"] = spec["ablation"]
    for name, rows in groups.items():
        table, family = [], []
        for row in rows:
            cells = {}
            for m in res.metrics:
                c = {"mean": res.mean(row["variant"], m.name),
                     "stderr": res.stderr(row["variant"], m.name),
                     "n": res.count(row["variant"], m.name)}
                if row["variant"] != default:
                    d = paired(res.scores, m.name, row["variant"], default)
                    c["diff"] = {k: d[k] for k in ("mean", "stderr", "n", "p")}
                    family.append(c["diff"])
                cells[m.name] = c
            table.append({**row, "metrics": cells})
        for d, p in zip(family, holm([d["p"] for d in family]), strict=True):
            d["p_holm"] = p
        if name == "ablation":
            out["ablation"] = table
        else:
            out["sweeps"][name] = table
    if spec["ablation"]:
        out["steps"] = steps(res, {r["key"]: r["variant"] for r in spec["ablation"]})
    return out


def steps(res: Results, ids: dict[str, str]) -> dict:
    """The Complexity metric's paired steps from the single maps to the hybrid.

    ``hybrid - best single = (CAM x LRP - best single) + (denoised - undenoised product)
    + (hybrid - unblurred product)``: the multiplication, denoising and blur steps add up
    to the win over the sparser of Grad-CAM++ and LRP. Also: the blur applied to each
    single map, and the hybrid against each single map. Holm over these comparisons.
    """
    m = next(mi for mi in res.metrics if mi.category == "Complexity")
    sign = 1.0 if m.higher_is_better else -1.0
    best = max(("cam", "lrp"), key=lambda k: sign * res.mean(ids[k], m.name))
    comps = [("multiplication", "cam_x_lrp", best), ("denoising", "denoised_x_lrp", "cam_x_lrp"),
             ("blur", "hybrid", "denoised_x_lrp"), ("blur on LRP alone", "blur_lrp", "lrp"),
             ("blur on Grad-CAM++ alone", "blur_cam", "cam"), ("hybrid vs Grad-CAM++", "hybrid",
                                                               "cam"),
             ("hybrid vs LRP", "hybrid", "lrp")]
    rows = []
    for label, a, b in comps:
        d = paired(res.scores, m.name, ids[a], ids[b])
        rows.append({"step": label, "a": a, "b": b, "improvement": sign * d["mean"],
                     "stderr": d["stderr"], "n": d["n"], "p": d["p"]})
    for r, p in zip(rows, holm([r["p"] for r in rows]), strict=True):
        r["p_holm"] = p
        r["outcome"] = (("better" if r["improvement"] > 0 else "worse")
                        if np.isfinite(p) and p < ALPHA else "no significant difference")
    return {"metric": m.name, "category": m.category, "best_single": best, "rows": rows,
            "answer": answer(rows, best)}


def answer(rows: list[dict], best: str) -> str:
    """The blur-vs-multiplication answer, from the step rows (not written by hand)."""
    r = {x["step"]: x for x in rows}
    single = {"cam": "Grad-CAM++", "lrp": "LRP"}[best]

    def said(x: dict) -> str:
        return (f"{fmt(x['improvement'])} ± {fmt(x['stderr'])} (p_Holm {fmt_p(x['p_holm'])}, "
                f"{x['outcome']})")

    win = [r["hybrid vs Grad-CAM++"]["outcome"], r["hybrid vs LRP"]["outcome"]]
    head = ("The hybrid is sparser than both Grad-CAM++ and LRP" if win == ["better"] * 2
            else "The hybrid is not significantly sparser than both Grad-CAM++ and LRP here")
    mult = r["multiplication"]["improvement"] + r["denoising"]["improvement"]
    blur = r["blur"]["improvement"]
    mult_sig = any(r[k]["outcome"] == "better" for k in ("multiplication", "denoising"))
    blur_sig = r["blur"]["outcome"] == "better"
    if mult_sig and not blur_sig:
        verdict = ("the gain comes from the multiplication (with the denoised CAM), not from "
                   "the blur" + (", which makes the maps less sparse"
                                 if r["blur"]["outcome"] == "worse" else ""))
    elif blur_sig and not mult_sig:
        verdict = "the gain comes from the blur, not from the multiplication"
    elif blur_sig and mult_sig:
        bigger = "the multiplication" if mult >= blur else "the blur"
        verdict = f"both steps add to it; the larger share comes from {bigger}"
    else:
        verdict = "neither step is a significant gain at this n"
    return (f"{head}. From the sparser single map ({single}) to the hybrid: the "
            f"multiplication adds {said(r['multiplication'])}, the denoising "
            f"{said(r['denoising'])}, the blur {said(r['blur'])} (improvements in the "
            f"metric's direction; they add up to the hybrid's gain over {single}). The blur "
            f"on its own changes LRP by {said(r['blur on LRP alone'])} and Grad-CAM++ by "
            f"{said(r['blur on Grad-CAM++ alone'])}. Answer: {verdict}.")


# ----------------------------------------------------------------------------- markdown


def _f(v: Any) -> str:
    return fmt(_num(v))


def _p(v: Any) -> str:
    return fmt_p(_num(v))


def _cell(c: dict) -> str:
    s = f"{_f(c['mean'])} ± {_f(c['stderr'])}, n = {c['n']}"
    if "diff" in c:
        d = c["diff"]
        s += f"; Δ {_f(d['mean'])} ± {_f(d['stderr'])}, p_Holm {_p(d['p_holm'])}"
    return s


def _table(rows: list[dict], first: str, metrics: list[dict], label: Any) -> list[str]:
    head = [first] + [f"{m['category']}: {m['name']} ({'↑' if m['higher_is_better'] else '↓'})"
                      for m in metrics]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out.append("| " + " | ".join([label(row)] + [_cell(row["metrics"][m["name"]])
                                                      for m in metrics]) + " |")
    return out


def _value(param: str, v: Any) -> str:
    if param == "sigma" and v == 0:
        return "0 (no blur: 1x1 kernel)"
    mark = " (default)" if v == DEFAULTS[param] else ""
    return f"{v:g}{mark}" if isinstance(v, float) else f"{v}{mark}"


def markdown(d: dict) -> str:
    """sweep.md from the JSON data alone (so ``--from-json`` rebuilds it exactly)."""
    out = [
        "# Sweeps and ablation of the hybrid",
        "",
        "One parameter of the hybrid varies at a time, the others at the paper's defaults "
        "(threshold 0.2, 5x5 kernel, sigma 4, signed channel mean). Metrics: "
        "`jaxlrp.metrics.default_suite()`, one per category. Data: the embedded test split "
        f"(first {d['n']} images, seed 0, with object masks), target = the true label, batch "
        f"size {d['batch_size']}, key {d['key']}.",
        "",
        SIGMA_WHY,
        "",
        "No blur (sigma 0) is the library's 1x1 kernel (`ksize=1`): the hybrid rejects sigma "
        "<= 0, and a sigma of 0 in `gaussian_blur` means OpenCV's sigma derived from the "
        "kernel size, not no blur.",
        "",
        "Cells: mean ± standard error over the images with a finite score, n images; Δ: the "
        "paired difference variant − default hybrid (mean ± SE over images) with the "
        "two-sided paired t-test's p, Holm-adjusted within each table (all its variants x "
        f"metrics); a difference is significant when p_Holm < {ALPHA}. ↑/↓: higher/lower is "
        "better.",
        "",
        f"Generated by `{d['command']}` (jaxlrp {d['jaxlrp']}). {U.machine_md(d['machine'])}",
        "",
    ]
    for name, model in d["models"].items():
        out += [f"## {name}", ""]
        if "not_evaluated" in model:
            out += [f"**Not evaluated**: {model['not_evaluated']}", ""]
            continue
        figs = ([f"`{d['name']}_{name}.png`"] if model["summary"]["sweeps"] else []) + (
            [f"`{d['name']}_ablation_{name}.png`"] if model["summary"]["ablation"] else [])
        out += [f"{model['description']}. Scoring took {model['seconds']:.0f} s. Figures: "
                f"{', '.join(figs)}.", ""]
        metrics = model["results"]["metrics"]
        for sname, rows in model["summary"]["sweeps"].items():
            param = d["plan"]["sweeps"][sname]["param"]
            out += [f"### Sweep: {sname}", ""]
            out += _table(rows, param, metrics, lambda r, p=param: _value(p, r["value"]))
            out += [""]
        if model["summary"]["ablation"]:
            out += ["### Ablation", "",
                    "Each variant is `combine_parts` with a step made neutral (a CAM or a "
                    "relevance of ones, threshold 0, a 1x1 kernel): all end with the hybrid's "
                    "max-normalisation and clip to [0, 1] (LRP alone is the positive part of "
                    "the max-normalised channel mean).", ""]
            out += _table(model["summary"]["ablation"], "variant", metrics,
                          lambda r: r["label"])
            st = model["summary"]["steps"]
            out += ["", f"#### Complexity: blur or multiplication? ({st['metric']})", "",
                    "| step | compared | improvement ± SE | n | p_Holm | outcome |",
                    "|---|---|---|---|---|---|"]
            for r in st["rows"]:
                out.append(f"| {r['step']} | {r['a']} − {r['b']} | {_f(r['improvement'])} ± "
                           f"{_f(r['stderr'])} | {r['n']} | {_p(r['p_holm'])} | "
                           f"{r['outcome']} |")
            out += ["", st["answer"], ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- figures


def figures(d: dict, out: Path) -> list[Path]:
    """sweep_<model>.png (metric vs parameter) and sweep_ablation_<model>.png per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxlrp.viz import metric_chart

    paths = []
    for name, model in d["models"].items():
        if "not_evaluated" in model:
            continue
        metrics = model["results"]["metrics"]
        sweeps = model["summary"]["sweeps"]
        if sweeps:
            fig, axes = plt.subplots(len(sweeps), len(metrics), squeeze=False,
                                     figsize=(3.2 * len(metrics), 2.6 * len(sweeps)))
            for i, (sname, rows) in enumerate(sweeps.items()):
                param = d["plan"]["sweeps"][sname]["param"]
                labels = [str(r["value"]) for r in rows]
                for j, m in enumerate(metrics):
                    ax = axes[i][j]
                    mu = [_num(r["metrics"][m["name"]]["mean"]) for r in rows]
                    se = [_num(r["metrics"][m["name"]]["stderr"]) for r in rows]
                    xs = np.arange(len(rows))
                    ax.errorbar(xs, mu, yerr=np.nan_to_num(se), marker="o", capsize=3)
                    dflt = [k for k, r in enumerate(rows) if r["value"] == DEFAULTS[param]]
                    if dflt:
                        ax.axvline(dflt[0], color="grey", lw=0.8, ls="--")
                    ax.set_xticks(xs, labels, fontsize=7)
                    ax.set_xlabel(param + (" (0: no blur)" if param == "sigma" else ""),
                                  fontsize=8)
                    if i == 0:
                        ax.set_title(f"{m['category']}\n{m['name']} "
                                     f"({'↑' if m['higher_is_better'] else '↓'})", fontsize=8)
                    ax.tick_params(labelsize=7)
            fig.suptitle(f"{name}: one parameter at a time (mean ± SE; dashed: default)",
                         fontsize=9)
            fig.tight_layout()
            p = out / f"{d['name']}_{name}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            paths.append(p)
        if model["summary"]["ablation"]:
            table = {r["key"]: {m["name"]: (_num(r["metrics"][m["name"]]["mean"]),
                                            _num(r["metrics"][m["name"]]["stderr"]))
                                for m in metrics} for r in model["summary"]["ablation"]}
            p = out / f"{d['name']}_ablation_{name}.png"
            metric_chart(table, {m["name"]: m["category"] for m in metrics}, p,
                         higher_is_better={m["name"]: m["higher_is_better"] for m in metrics},
                         title=f"{name}: ablation of the hybrid")
            paths.append(p)
    return paths


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------- models


def model_path(name: str) -> Path:
    """The weights file a model needs."""
    if name == "vgg":
        from jaxlrp.models.default import DEFAULT_PATH

        return DEFAULT_PATH
    return importlib.import_module(f"jaxlrp.models.{name}").PATH


def checkpoint_facts(name: str) -> tuple[str, bool]:
    """(a note on the model's weights file: test accuracy, whether it is an intermediate
    checkpoint of a training still under way; True when it is intermediate)."""
    from jaxlrp import checkpoint

    md = checkpoint.read_header(model_path(name)).get("metadata") or {}
    recipe = md.get("recipe") or {}
    planned = recipe.get("epochs") or sum(int(e) for e, _ in recipe.get("phases", ())) or None
    done = md.get("epochs_done")
    partial = isinstance(done, int) and isinstance(planned, int) and done < planned
    acc = md.get("test_accuracy")
    notes = ([f"test accuracy {acc:.3f}"] if isinstance(acc, float) else []) + (
        [f"INTERMEDIATE checkpoint: epoch {done} of {planned}"] if partial else [])
    return ", ".join(notes), partial


def load_model(name: str) -> Any:
    """The model, or SystemExit naming the missing weights file and how to make it."""
    path = model_path(name)
    if not path.is_file():
        root = Path(__file__).resolve().parent.parent
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        how = (f"train it first with `python benchmarks/train_reference_models.py {name}`"
               if name != "vgg" else "it ships with jaxlrp: reinstall or check out the file")
        raise SystemExit(f"sweep.py: model {name!r}: its weights file {shown} does not "
                         f"exist; {how}")
    from jaxlrp import models

    return {"vgg": models.default_model, "convnext": models.convnext_model,
            "vit": models.vit_model}[name]()


# ----------------------------------------------------------------------------- driver


def collect(models: Sequence[str], *, n: int, batch_size: int, key: int = 0,
            sweeps: Sequence[str] = tuple(SWEEPS), ablation: bool = True,
            values: dict[str, Sequence] | None = None, command: str = "benchmarks/sweep.py",
            name: str = "sweep", progress: bool = True) -> dict:
    """Run the sweeps/ablation on every model; the JSON-ready result (scores + summaries)."""
    from jaxlrp.data import embedded

    spec = plan(sweeps, ablation, values)
    variants = [Variant(**v) for v in spec["variants"].values()]
    info = U.machine()
    data = embedded("test", n=n, seed=0)
    scored = {}
    for mname in models:
        model = load_model(mname)
        note, partial = checkpoint_facts(mname)
        if partial:
            print(f"warning: {mname}: {note}", file=sys.stderr)
        print(f"{mname}: {len(variants)} variants on {n} images", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = score(model, data, variants, batch_size=batch_size, key=key, progress=progress)
        scored[mname] = (res, time.perf_counter() - t0)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return assemble(spec, scored, info, n=n, batch_size=batch_size, key=key, command=command,
                    name=name)


def assemble(spec: dict, scored: dict[str, tuple[Results, float]], info: dict, *, n: int,
             batch_size: int, key: int, command: str, name: str) -> dict:
    """The JSON-ready document: run facts, the plan, and per model (scores, seconds) its
    description, summaries and every per-image score."""
    d: dict[str, Any] = {"name": name, "command": command, "jaxlrp": jaxlrp.__version__,
                         "n": n, "batch_size": batch_size, "key": key, "plan": spec,
                         "machine": info, "models": {}}
    for mname, (res, seconds) in scored.items():
        note = checkpoint_facts(mname)[0] if model_path(mname).is_file() else ""
        desc = (f"{mname} (`{model_path(mname).name}`{', ' + note if note else ''}) on the "
                f"embedded test split, "
                f"{res.num_examples} images, {len(res.explainers)} distinct variants")
        d["models"][mname] = {"description": desc, "seconds": seconds,
                              "summary": summarise(res, spec), "results": res.to_dict()}
    return json.loads(json.dumps(_clean(d)))


def write(d: dict) -> str:
    """Write <name>.json, <name>.md and the figures in the results folder; returns the
    markdown."""
    md = markdown(d)
    U.write_results(d["name"], d, md)
    figures(d, U.RESULTS)
    return md


def rebuild(path: Path) -> str:
    """``--from-json``: rewrite <name>.md and the figures from a results file."""
    d = json.loads(Path(path).read_text())
    md = markdown(d)
    U.RESULTS.mkdir(parents=True, exist_ok=True)
    (U.RESULTS / f"{d['name']}.md").write_text(md)
    figures(d, U.RESULTS)
    return md


def default_models() -> tuple[list[str], dict[str, str]]:
    """(the models whose weights file exists and is finished, {skipped model: why}): an
    intermediate checkpoint of a training under way is left out unless asked for."""
    models, skipped = [], {}
    for m in MODELS:
        if not model_path(m).is_file():
            continue
        note, partial = checkpoint_facts(m)
        if partial:
            skipped[m] = (f"its weights file is an {note.split('INTERMEDIATE ')[-1]} (a "
                          f"training still under way); `--models {m}` runs it anyway")
            print(f"sweep.py: skipping {m}: {skipped[m]}", file=sys.stderr)
        else:
            models.append(m)
    return models, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=None,
                   help="models to run (default: every model whose weights file exists, "
                   "except an intermediate checkpoint of a training still under way)")
    p.add_argument("--n", type=int, default=200, help="embedded test images (default 200)")
    p.add_argument("--batch-size", type=int, default=50, help="images per batch (default 50)")
    p.add_argument("--quick", action="store_true", help="16 images, batch 16")
    p.add_argument("--tiny", action="store_true", help="2 images, batch 2 (smoke test)")
    p.add_argument("--sweeps", nargs="+", choices=(*SWEEPS, "ablation"),
                   default=(*SWEEPS, "ablation"), help="what to run (default: everything)")
    p.add_argument("--key", type=int, default=0, help="seed of the random metrics")
    p.add_argument("--name", default="sweep", help="results file name (default sweep)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="rebuild the markdown and the figures from a results file; no model "
                   "is run")
    args = p.parse_args(argv)
    if args.from_json:
        print(rebuild(Path(args.from_json)))
        return 0
    n, bs = (2, 2) if args.tiny else (16, 16) if args.quick else (args.n, args.batch_size)
    models, skipped = (args.models, {}) if args.models else default_models()
    if not models:
        raise SystemExit("sweep.py: no model has a finished weights file; see --help")
    flags = " ".join(sys.argv[1:] if argv is None else argv)
    d = collect(models, n=n, batch_size=bs, key=args.key,
                sweeps=[s for s in args.sweeps if s in SWEEPS],
                ablation="ablation" in args.sweeps, name=args.name,
                command=f"python benchmarks/sweep.py {flags}".strip(),
                progress=not args.no_progress)
    d["models"].update({m: {"not_evaluated": why} for m, why in skipped.items()})
    print(write(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
