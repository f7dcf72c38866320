"""Reproduce the evaluation of arXiv 2405.12175: is the hybrid better than Grad-CAM and LRP?

Evaluates Grad-CAM, Grad-CAM++, LRP (the paper's composite) and the hybrid with the
default metric suite (one metric per category, see ``jaxlrp.metrics.default_suite``) on

  (a) the shipped default VGG on the embedded shapes test set (with object masks), and
  (b) EfficientNet-Lite0 on the bundled real photos (no masks: Localisation is skipped),

then writes ``benchmarks/results/paper_table.md`` / ``.json`` and one bar chart per part,
with a category-by-category verdict of the paper's claim: the hybrid beats both
Grad-CAM and LRP on Complexity, and at least one of them on each other category.
Nothing is tuned: every explainer and metric runs with its defaults.

Verdicts per category come from paired differences over images with a paired t-test,
Holm-adjusted over the claim's comparisons (see :func:`verdict`).

Part (a) also gets (not part of the claim): sanity rows, model parameter randomisation
(MPRT cascading and independent, eMPRT, sMPRT) on ``--sanity-n`` images, compared
hybrid vs Grad-CAM / LRP in their own Holm family; and the reliability of the ranking
(MetaQuantus's minor-perturbation test): ``--meta-draws`` draws of small weight noise and
of small input noise, each rescoring ``--meta-n`` images (see ``_paper_meta.py``).

Part (b) runs only when asked (``--parts embedded,photos``): with 4 photos and labels that
are the model's own top-1 (``jaxlrp/assets/photos/labels.json``, wrong for astronaut and
rocket) it is a smoke run, not a test of the claim.

Usage::

    python benchmarks/reproduce_paper.py            # 500 embedded test images
    python benchmarks/reproduce_paper.py --quick    # 50 images, for a smoke test
    python benchmarks/reproduce_paper.py --n 1000 --batch-size 100
    python benchmarks/reproduce_paper.py --sanity-n 0 --meta-draws 0   # the table only
    python benchmarks/reproduce_paper.py --from-json benchmarks/results/paper_table.json
        # rebuild every section from the stored per-example scores, no model run

Per-batch scores are kept under ``benchmarks/results/runs/`` so an interrupted run
resumes where it stopped (``--no-resume`` recomputes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxlrp
from jaxlrp.cli.evaluate import photos_batches
from jaxlrp.errors import ExplanationError
from jaxlrp.evaluation import Results, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper_meta as PM  # noqa: E402

EXPLAINERS = ("gradcam", "gradcam++", "lrp", "hybrid")
BASELINES = ("gradcam", "lrp")  # the two methods the paper compares the hybrid with
HERE = Path(__file__).resolve().parent


ALPHA = 0.05  # family-wise error rate of the claim's comparisons (Holm)


def paired(scores: dict, metric: str, a: str, b: str) -> dict:
    """Paired comparison of explainers a and b on one metric, over the images scored by both.

    Returns mean and standard error of the per-image difference a - b, n, and the
    two-sided p-value of the paired t-test (t = mean / SE with n - 1 degrees of freedom).
    """
    from scipy import stats

    x = np.asarray(scores[a][metric], np.float64)
    y = np.asarray(scores[b][metric], np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    n = int(d.size)
    if n == 0:
        return {"mean": float("nan"), "stderr": float("nan"), "n": 0, "p": float("nan")}
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if n > 1 and se > 0:
        p = float(2 * stats.t.sf(abs(d.mean()) / se, n - 1))
    elif n > 1 and np.all(d == 0):
        p = 1.0
    else:
        p = float("nan") if n < 2 else 0.0
    pw = float(stats.wilcoxon(d).pvalue) if n > 1 and np.any(d != 0) else float("nan")
    return {"mean": float(d.mean()), "stderr": se, "n": n, "p": p, "p_wilcoxon": pw}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (NaN stays NaN and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if np.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adj = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def compare(scores: dict, metrics: list[dict], explainers: list[str]) -> list[dict]:
    """Paired comparisons of the hybrid with Grad-CAM, LRP (one Holm family) and Grad-CAM++.

    One row per metric; ``row["vs"][other]`` holds the improvement (hybrid - other, signed
    so that positive is better), its SE, n, the t-test and Wilcoxon p-values, their Holm
    adjustment over the family of every hybrid-vs-Grad-CAM/LRP comparison in ``metrics``
    (Grad-CAM++ stays unadjusted, outside the family) and the outcome ("better", "worse"
    or "no significant difference" at ALPHA).
    """
    rows, family = [], []
    for m in metrics:
        sign = 1.0 if m["higher_is_better"] else -1.0
        row = {"category": m["category"], "metric": m["name"],
               "higher_is_better": m["higher_is_better"], "vs": {}}
        for other in ("gradcam", "lrp", "gradcam++"):
            if other not in explainers:
                continue
            c = paired(scores, m["name"], "hybrid", other)
            row["vs"][other] = {"improvement": sign * c["mean"], "stderr": c["stderr"],
                                "n": c["n"], "p": c["p"], "p_wilcoxon": c["p_wilcoxon"]}
            if other in BASELINES:
                family.append(row["vs"][other])
        rows.append(row)
    for c, p_adj, pw_adj in zip(family, holm([c["p"] for c in family]),
                                holm([c["p_wilcoxon"] for c in family]), strict=True):
        c["p_holm"], c["p_wilcoxon_holm"] = p_adj, pw_adj
    for row in rows:
        for suffix, key, key_holm in (("", "p", "p_holm"),
                                      ("_wilcoxon", "p_wilcoxon", "p_wilcoxon_holm")):
            for c in row["vs"].values():
                p = c.get(key_holm, c[key])
                sig = bool(np.isfinite(p) and p < ALPHA)
                c["outcome" + suffix] = (("better" if c["improvement"] > 0 else "worse") if sig
                                         else "no significant difference")
    return rows


def verdict(scores: dict, metrics: list[dict], explainers: list[str]) -> list[dict]:
    """One row per category: does the hybrid beat Grad-CAM / LRP (and Grad-CAM++)?

    ``metrics``: dicts with ``name``, ``category``, ``higher_is_better``. Each comparison
    of the hybrid with a baseline is a paired t-test over images; the claim's comparisons
    (hybrid vs Grad-CAM and vs LRP in every category: 2 x categories tests) are one family,
    Holm-adjusted to a family-wise error rate of ALPHA (see :func:`compare`). A comparison
    is "better" or "worse" when its adjusted p < ALPHA, else "no significant difference".
    Category verdicts: "holds" when the hybrid is significantly better than both baselines
    (Complexity) or than at least one (other categories); "does not hold" when it is
    significantly worse than at least one (Complexity) or than both (others); otherwise
    "not significant". Grad-CAM++ is compared for information, outside the family
    (unadjusted p).
    """
    rows = compare(scores, metrics, explainers)
    for row in rows:
        for suffix in ("", "_wilcoxon"):
            out = [row["vs"][o]["outcome" + suffix] for o in BASELINES]
            if row["category"] == "Complexity":
                row["claim"] = "beats both Grad-CAM and LRP"
                holds, fails = all(o == "better" for o in out), any(o == "worse" for o in out)
            else:
                row["claim"] = "beats at least one of Grad-CAM and LRP"
                holds, fails = any(o == "better" for o in out), all(o == "worse" for o in out)
            row["verdict" + suffix] = ("holds" if holds else "does not hold" if fails
                                       else "not significant")
    return rows


def _metric_dicts(res: Results) -> list[dict]:
    return [{"name": m.name, "category": m.category, "higher_is_better": m.higher_is_better}
            for m in res.metrics]


def fmt(v: float, digits: int = 4) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"


def part_markdown(title: str, res: Results, rows: list[dict], info: dict) -> str:
    out = [f"## {title}", ""]
    out.append(
        f"{info['description']}. {res.num_examples} images, batch size "
        f"{info['batch_size']}, key {info['key']}, target: the true label. Wall time "
        f"{info['seconds']:.0f} s ({info['load']})."
    )
    out += ["", res.to_markdown(), "### Verdict of the paper's claim", ""]
    out.append("| category | metric | claim | hybrid − Grad-CAM | hybrid − LRP | "
               "hybrid − Grad-CAM++ | verdict |")
    out.append("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for o in ("gradcam", "lrp", "gradcam++"):
            v = r["vs"].get(o)
            if v is None:
                cells.append("n/a")
                continue
            p = (f"p_Holm {fmt_p(v['p_holm'])}" if "p_holm" in v
                 else f"p {fmt_p(v['p'])}, unadjusted")
            cells.append(f"{fmt(v['improvement'])} ± {fmt(v['stderr'])}, n = {v['n']}, "
                         f"{p} ({v['outcome']})")
        out.append(f"| {r['category']} | {r['metric']} | {r['claim']} | " + " | ".join(cells)
                   + f" | **{r['verdict']}** |")
    for name, why in res.skipped.items():
        cat = {"RelevanceRankAccuracy": "Localisation"}.get(name, name)
        out.append(f"| {cat} | {name} | — | not evaluated: {why} | | | — |")
    out += ["", "Differences are paired over images (mean ± standard error, n images scored "
            "by both) and signed so that a positive value means the hybrid is better in the "
            "metric's direction. Test: two-sided paired t-test per comparison. Multiplicity: "
            "the claim's comparisons (hybrid vs Grad-CAM and vs LRP, in every category) form "
            f"one family, Holm-adjusted to a family-wise error rate of {ALPHA}; Grad-CAM++ is "
            "shown for information with its unadjusted p. A comparison is better/worse when "
            f"its adjusted p < {ALPHA}. Verdict: \"holds\" when the hybrid is significantly "
            "better than both baselines (Complexity) or than at least one (other "
            "categories); \"does not hold\" when it is significantly worse than at least one "
            "(Complexity) or than both (others); otherwise \"not significant\".",
            "", _wilcoxon_note(rows), ""]
    return "\n".join(out)


def _wilcoxon_note(rows: list[dict]) -> str:
    differ = [r["category"] for r in rows if r["verdict_wilcoxon"] != r["verdict"]]
    head = ("Check with a rank test (Wilcoxon signed-rank, Holm-adjusted the same way; its "
            "p-values are in the json): ")
    if not differ:
        return head + "the same verdict in every category."
    return head + "different verdicts in " + ", ".join(
        f"{r['category']} ({r['verdict_wilcoxon']})" for r in rows
        if r["category"] in differ) + "."


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    if p < 1e-300:
        return "< 1e-300"
    return "= " + (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def run_part(name: str, model, data, args, description: str) -> tuple[Results, dict]:
    out_dir = Path(args.out) / "runs" / name
    t0 = time.perf_counter()
    kwargs = dict(target="label", batch_size=args.batch_size, key=args.seed, out_dir=out_dir,
                  progress=not args.no_progress, chart=False,
                  meta={"part": name, "description": description})
    try:
        res = evaluate(model, data, EXPLAINERS, None, resume=not args.no_resume, **kwargs)
    except ExplanationError as e:
        if "another configuration" not in str(e):
            raise
        print(f"{out_dir}: a previous run used another model or settings; recomputing",
              file=sys.stderr)
        res = evaluate(model, data, EXPLAINERS, None, resume=False, **kwargs)
    seconds = time.perf_counter() - t0
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    timing = out_dir / "timing.json"
    if res.meta["computed_batches"]:
        timing.write_text(json.dumps({"seconds": seconds, "load": load,
                                      "computed_batches": res.meta["computed_batches"]}))
    elif timing.is_file():  # everything was resumed: report the time it took to compute
        old = json.loads(timing.read_text())
        seconds, load = old["seconds"], old["load"] + "; scores resumed from disk"
    info = {"description": description, "batch_size": args.batch_size, "key": args.seed,
            "seconds": seconds, "load": load,
            "computed_batches": res.meta["computed_batches"],
            "resumed_batches": res.meta["resumed_batches"]}
    from jaxlrp.viz import metric_chart

    metric_chart(res.table(), res.categories(), Path(args.out) / f"paper_chart_{name}.png",
                 higher_is_better={m.name: m.higher_is_better for m in res.metrics},
                 title=description)
    return res, info


def _clean(o):
    """NaN/inf -> None, numpy scalars and arrays -> Python, recursively (strict JSON)."""
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


# ----------------------------------------------------------------------------- sanity rows

#: Defaults of the sanity rows and the reliability check. Cost measured at tiny size (8
#: images, batch 8, 2 busy CPU cores, default VGG 64x64, four explainers together):
#: MPRT 0.16 s/image, MPRT-independent 0.10, EfficientMPRT 0.05, SmoothMPRT with 10
#: samples 1.5 (with Quantus's 50 samples about 7), i.e. about 1.8 s/image for the sanity
#: rows, plus about 50 s of compilation; the default suite costs 0.12-0.23 s/image per
#: (re)evaluation, and the reliability check runs 2 x draws evaluations of --meta-n images.
#: With 100 sanity images (~3.5 min), 5 draws of 100 images (~2-4 min) and the 500-image
#: table (~2 min) a full run stays under ~10 min on 2 cores.
SANITY_N, SMPRT_SAMPLES = 100, 10
META_DRAWS, META_N = 5, 100
#: Minor-perturbation sizes, measured on the first 500 test images (accuracy 0.970):
#: model noise std 0.01 leaves accuracy at 0.970 (99.6% of predictions unchanged; 0.02:
#: -0.6 points; 0.05: -3 points); input noise std 0.01 costs at most 0.6 points (99.4%
#: unchanged; 0.05: -9 points). MetaQuantus's own model std is 0.001.
META_MODEL_STD, META_INPUT_STD = 0.01, 0.01


def sanity_run(model, data, args) -> tuple[Results, dict]:
    """Score the four explainers with the sanity metrics (resumable, like run_part)."""
    out_dir = Path(args.out) / "runs" / "embedded_sanity"
    t0 = time.perf_counter()
    kwargs = dict(target="label", batch_size=args.batch_size, key=args.seed, out_dir=out_dir,
                  progress=not args.no_progress, chart=False, meta={"part": "embedded_sanity"})
    metrics = PM.sanity_metrics(args.smprt_samples)
    try:
        res = evaluate(model, data, EXPLAINERS, metrics, resume=not args.no_resume, **kwargs)
    except ExplanationError as e:
        if "another configuration" not in str(e):
            raise
        res = evaluate(model, data, EXPLAINERS, metrics, resume=False, **kwargs)
    info = {"n": len(data), "batch_size": args.batch_size, "key": args.seed,
            "smprt_samples": args.smprt_samples, "seconds": time.perf_counter() - t0,
            "load": f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
            "resumed_batches": res.meta["resumed_batches"]}
    return res, info


def reliability_run(model, data, res: Results, args) -> dict:
    """The minor-perturbation (noise-resilience) test of MetaQuantus on part (a).

    ``data``/``res``: the part's dataset and results. For each of ``args.meta_draws``
    draws, the model's weights get multiplicative noise N(1, meta_model_std^2) (test
    "model") and, separately, the images get additive noise N(0, meta_input_std^2) (test
    "input"); the default suite is rerun on the first ``args.meta_n`` images with the same
    metric keys as the unperturbed run. Returns the raw record that
    :func:`_paper_meta.reliability_stats` summarises.
    """
    from jaxlrp.data import embedded

    t0 = time.perf_counter()
    meta_n = args.meta_n
    acc_data = data if len(data) >= meta_n else embedded("test", n=meta_n, seed=0)
    mdata = acc_data.take(meta_n)
    metrics = _metric_dicts(res)
    kw = dict(target="label", batch_size=args.batch_size, key=args.seed, progress=False,
              chart=False)
    if meta_n <= len(data) and meta_n % args.batch_size == 0:
        # the same batches and metric keys as the table's run: reuse its scores
        ref_scores, ref_from = {e: {m["name"]: res.scores[e][m["name"]][:meta_n]
                                    for m in metrics} for e in EXPLAINERS}, "table"
    else:
        ref_scores = evaluate(model, mdata, EXPLAINERS, None, **kw).scores
        ref_from = "separate"
    pred0 = PM.predictions(model, acc_data.images)
    acc0 = float(np.mean(pred0 == acc_data.labels))
    tests = {}
    specs = (("model", args.meta_model_std,
              "multiplicative Gaussian noise on every weight array, w * (1 + std * N(0, 1))"),
             ("input", args.meta_input_std,
              "additive Gaussian noise on every pixel, x + std * N(0, 1)"))
    for tname, std, desc in specs:
        rec = {"description": desc, "std": std, "kept": [], "scores": [],
               "accuracy": {"n_images": len(acc_data), "unperturbed": acc0, "perturbed": [],
                            "unchanged": []}}
        for k in range(args.meta_draws):
            if tname == "model":
                pm = PM.perturbed_model(model, mdata.images[:1], std,
                                        jax.random.fold_in(jax.random.key(args.seed), 1000 + k))
                pdata, pred = mdata, PM.predictions(pm, acc_data.images)
            else:
                pm, pall = model, PM.perturbed_data(acc_data, std, 1000 * args.seed + k)
                pdata, pred = pall.take(meta_n), PM.predictions(model, pall.images)
            rec["accuracy"]["perturbed"].append(float(np.mean(pred == acc_data.labels)))
            rec["accuracy"]["unchanged"].append(float(np.mean(pred == pred0)))
            rec["kept"].append((pred[:meta_n] == pred0[:meta_n]).tolist())
            rec["scores"].append(evaluate(pm, pdata, EXPLAINERS, None, **kw).scores)
            print(f"reliability: {tname} draw {k + 1}/{args.meta_draws} done", file=sys.stderr)
        tests[tname] = rec
    return {"info": {"draws": args.meta_draws, "n": meta_n, "batch_size": args.batch_size,
                     "key": args.seed, "reference": ref_from,
                     "seconds": time.perf_counter() - t0,
                     "load": f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"},
            "explainers": list(EXPLAINERS), "metrics": metrics,
            "reference": ref_scores, "tests": tests}


# ----------------------------------------------------------------------------- markdown

NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "lrp": "LRP", "hybrid": "hybrid"}


def _cell(v: dict, holm_key: str = "p_holm") -> str:
    p = (f"p_Holm {fmt_p(v[holm_key])}" if holm_key in v
         else f"p {fmt_p(v['p'])}, unadjusted")
    return f"{fmt(v['improvement'])} ± {fmt(v['stderr'])}, n = {v['n']}, {p} ({v['outcome']})"


def sanity_markdown(sanity: dict) -> str:
    """The sanity-check section from the stored sanity record (results + info)."""
    res = Results.from_dict(sanity["results"])
    info = sanity["info"]
    rows = compare(res.scores, _metric_dicts(res), list(res.explainers))
    out = ["## Sanity checks: model parameter randomisation (part (a))", "",
           f"First {info['n']} images of part (a), batch size {info['batch_size']}, key "
           f"{info['key']}, target: the true label. Wall time {info['seconds']:.0f} s "
           f"({info['load']}). These rows are extra Randomisation metrics, not part of the "
           "paper's protocol or of its claim.", "",
           "- **MPRT** (Adebayo et al. 2018; Quantus `MPRT`, `layer_order=\"top_down\"`): the "
           "layers owning parameters are randomised cumulatively from the output layer "
           "down; score: Spearman correlation of |map| before/after, averaged over the "
           "steps. **MPRT-independent**: the same with one layer randomised at a time "
           "(`layer_order=\"independent\"`). Lower is better (1 = the explanation ignores "
           "the weights).",
           "- **EfficientMPRT** (eMPRT, Hedström et al. 2024): relative rise of the map's "
           "histogram entropy when every layer is randomised. Higher is better.",
           f"- **SmoothMPRT** (sMPRT, Hedström et al. 2024): MPRT (bottom-up cascade) on "
           f"explanations averaged over {info['smprt_samples']} noisy copies of the image "
           "(noise 0.1 x the image's range; Quantus's default is 50 copies, reduced here "
           "for cost). Lower is better.", "",
           res.to_markdown(), "### Hybrid vs Grad-CAM and LRP on the sanity metrics", "",
           "| metric | hybrid − Grad-CAM | hybrid − LRP | hybrid − Grad-CAM++ |",
           "|---|---|---|---|"]
    for r in rows:
        cells = [_cell(r["vs"][o]) if o in r["vs"] else "n/a"
                 for o in ("gradcam", "lrp", "gradcam++")]
        arrow = "↑" if r["higher_is_better"] else "↓"
        out.append(f"| {r['metric']} ({arrow}) | " + " | ".join(cells) + " |")
    fam = 2 * len(rows)
    out += ["", "Paired differences as in the verdict table (positive: the hybrid is better "
            "in the metric's direction). Multiplicity: these "
            f"{fam} comparisons (hybrid vs Grad-CAM and vs LRP on the {len(rows)} sanity "
            f"metrics) are their **own Holm family** (family-wise error rate {ALPHA}), "
            "separate from the claim's family above, which they do not change; Grad-CAM++ "
            "unadjusted, for information.", "", "### Context and what the data says", "",
            "Adebayo et al. (2018, \"Sanity checks for saliency maps\") found that Guided "
            "Back-propagation and Guided Grad-CAM, the elementwise product of a Grad-CAM map "
            "and a high-resolution (Guided Back-propagation) map, barely change when the "
            "model's weights are randomised layer by layer: the high-resolution factor "
            "mostly reflects the input (edges), and multiplying by a CAM does not repair "
            "that. The hybrid has the same structure (a CAM times a high-resolution LRP "
            "z+ map, whose insensitivity to the upper layers' weights is also documented; "
            "Sixt et al. 2020), so the question is whether it inherits the failure.", "",
            _sanity_summary(res, rows), ""]
    return "\n".join(out)


def _sanity_summary(res: Results, rows: list[dict]) -> str:
    """Data-driven sentences on the hybrid's sanity scores."""
    parts = []
    for r in rows:
        m = r["metric"]
        vals = ", ".join(f"{NAMES[e]} {fmt(res.mean(e, m), 3)}" for e in res.explainers)
        outs = "; ".join(f"vs {NAMES[o]}: {r['vs'][o]['outcome']}" for o in BASELINES
                         if o in r["vs"])
        parts.append(f"{m}: {vals} (hybrid: {outs})")
    text = "Means: " + ". ".join(parts) + "."
    h = res.mean("hybrid", "MPRT") if "MPRT" in res.scores.get("hybrid", {}) else float("nan")
    if np.isfinite(h):
        text += (f" After the full cascade of randomisations the hybrid's maps keep a mean "
                 f"Spearman similarity of {h:.2f} (averaged over the steps) to the original "
                 "ones, where 1 would be the Guided Grad-CAM-like failure; whether that "
                 "counts as passing is a threshold the sanity-check literature does not fix, "
                 "so the table reports the numbers and the paired comparisons only.")
    return text


def reliability_markdown(rel: dict) -> str:
    """The "Reliability of the ranking" section from the stored reliability record."""
    st = PM.reliability_stats(rel)
    info = rel["info"]
    ref = ("the table's own scores of those images" if info["reference"] == "table"
           else "a separate unperturbed run on those images")
    out = ["## Reliability of the ranking (MetaQuantus minor-perturbation test, part (a))",
           "",
           f"Does the ranking of the four explainers in each category survive minor "
           f"perturbations? {info['draws']} perturbation draws per test; each reruns the "
           f"default suite on the first {info['n']} images of part (a) (batch size "
           f"{info['batch_size']}, the same metric key {info['key']} as the unperturbed "
           f"run, so only the perturbation differs); unperturbed reference: {ref}. Wall "
           f"time {info['seconds']:.0f} s ({info['load']}).", ""]
    for tname, t in st.items():
        rec = rel["tests"][tname]
        out += [f"### {tname.capitalize()} perturbation: {rec['description']}, std "
                f"{rec['std']:g}", "",
                f"Accuracy on {t['accuracy_n']} test images: {t['accuracy_unperturbed']:.3f} "
                f"unperturbed, change {t['accuracy_change']:+.4f} ± "
                f"{fmt(t['accuracy_change_se'])} (mean ± SE over draws); predictions "
                f"unchanged on {100 * t['unchanged_predictions']:.1f}% of the {info['n']} "
                "scored images (on average).", "",
                "| category | metric | unperturbed ranking (best first) | same ranking | "
                "same best | Kendall τ | IAC_NR | IEC_NR |", "|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            rk = " > ".join(NAMES[e] for e in r["reference_ranking"])
            out.append(
                f"| {r['category']} | {r['metric']} | {rk} | "
                f"{round(r['same_ranking'] * r['draws'])}/{r['draws']} | "
                f"{round(r['same_best'] * r['draws'])}/{r['draws']} | "
                f"{fmt(r['kendall_tau'], 3)} ± {fmt(r['kendall_tau_se'], 3)} | "
                f"{fmt(r['iac_nr'], 3)} ± {fmt(r['iac_nr_se'], 3)} | "
                f"{fmt(r['iec_nr'], 3)} ± {fmt(r['iec_nr_se'], 3)} |")
        out.append("")
    out += ["Columns: *same ranking*: draws whose ranking of the four explainers by mean "
            "score equals the unperturbed one; *same best*: draws with the same best "
            "explainer; *Kendall τ*: tau-b between the perturbed and unperturbed mean scores "
            "of the four explainers (1 = same order), mean ± SE over draws. *IAC_NR* and "
            "*IEC_NR* follow MetaQuantus (Hedström et al., TMLR 2023) on the images whose "
            "predicted class the perturbation left unchanged: IAC_NR is the p-value of a "
            "two-sided Wilcoxon signed-rank test (zero_method \"zsplit\") of each explainer's "
            "per-image scores with vs without perturbation, averaged over explainers and "
            "draws (high: the scores did not change significantly); IEC_NR is, per draw, the "
            "fraction of (image, rank position) pairs whose explainer is the same in the "
            "per-image orderings of the four explainers with and without perturbation "
            "(1 = every per-image ordering kept); SE over draws. Only the noise-resilience "
            "half of MetaQuantus is run (no disruptive \"adversary\" perturbations), so its "
            "combined MC score is not reported. The rankings here are over the first "
            f"{info['n']} images and can differ from the table's ranking over all images.",
            ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="embedded test images (default 500)")
    p.add_argument("--quick", action="store_true",
                   help="50 images and 2 photos, 10 sanity images, 2 draws of 25 (smoke test)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="key of the random metrics")
    p.add_argument("--parts", default="embedded",
                   help="comma-separated parts to run: embedded, photos (see the module "
                   "docstring: with 4 photos part (b) is a smoke run, not a test of the claim)")
    p.add_argument("--model", default=None,
                   help="checkpoint to use instead of the shipped default model (part a)")
    p.add_argument("--sanity-n", type=int, default=SANITY_N,
                   help=f"images for the sanity rows (MPRT, eMPRT, sMPRT) of part (a); 0 "
                   f"skips them (default {SANITY_N})")
    p.add_argument("--smprt-samples", type=int, default=SMPRT_SAMPLES,
                   help=f"noisy copies per explanation in sMPRT (default {SMPRT_SAMPLES}; "
                   "Quantus: 50)")
    p.add_argument("--meta-draws", type=int, default=META_DRAWS,
                   help=f"perturbation draws K of the ranking-reliability check; 0 skips it "
                   f"(default {META_DRAWS})")
    p.add_argument("--meta-n", type=int, default=META_N,
                   help=f"images of the ranking-reliability check (default {META_N})")
    p.add_argument("--meta-model-std", type=float, default=META_MODEL_STD,
                   help=f"std of the multiplicative weight noise (default {META_MODEL_STD})")
    p.add_argument("--meta-input-std", type=float, default=META_INPUT_STD,
                   help=f"std of the additive input noise (default {META_INPUT_STD})")
    p.add_argument("--out", default=os.environ.get("JAXLRP_BENCH_RESULTS") or str(HERE / "results"),
                   help="output folder (default: $JAXLRP_BENCH_RESULTS or benchmarks/results)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="rebuild paper_table.md/.json from the per-example scores in a results "
                   "file (verdicts, sanity comparisons, reliability statistics; no model is "
                   "run) and write them in --out")
    args = p.parse_args(argv)
    if args.from_json:
        recompute(Path(args.from_json), Path(args.out))
        return 0
    n = 50 if args.quick else args.n
    if args.quick:
        args.batch_size = min(args.batch_size, 25)
        args.sanity_n = min(args.sanity_n, 10)
        args.meta_draws, args.meta_n = min(args.meta_draws, 2), min(args.meta_n, 25)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    summary = {}
    t_all = time.perf_counter()

    if "embedded" in parts:
        from jaxlrp import checkpoint
        from jaxlrp.data import embedded
        from jaxlrp.models import default_model
        from jaxlrp.models.default import DEFAULT_PATH

        path = Path(args.model) if args.model else DEFAULT_PATH
    if "embedded" in parts and not path.is_file():
        shown = path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path
        why = (f"part (a) not evaluated: the model checkpoint {shown} does not exist (the shipped "
               "default model had not landed when this table was generated); rerun this script")
        print(why, file=sys.stderr)
        summary["embedded"] = {"not_evaluated": why}
    elif "embedded" in parts:
        model = checkpoint.load(path) if args.model else default_model()
        header = checkpoint.read_header(path)
        md = header.get("metadata") or {}
        acc = md.get("test_accuracy")
        done, planned = md.get("epochs_done"), (md.get("recipe") or {}).get("epochs")
        partial = isinstance(done, int) and isinstance(planned, int) and done < planned
        if partial:
            print(f"warning: {path} is an intermediate checkpoint (epoch {done} of {planned})",
                  file=sys.stderr)
        data = embedded("test", n=n, seed=0)
        desc = (f"(a) default VGG ({path.name}"
                + (f", test accuracy {acc:.3f}" if isinstance(acc, float) else "")
                + (f", INTERMEDIATE checkpoint: epoch {done} of {planned}" if partial else "")
                + f") on the embedded shapes test split (first {n} images, with masks)")
        res, info = run_part("embedded", model, data, args, desc)
        summary["embedded"] = {"info": info, "results": res.to_dict()}
        if args.sanity_n > 0:
            sres, sinfo = sanity_run(model, embedded("test", n=args.sanity_n, seed=0), args)
            summary["embedded"]["sanity"] = {"info": sinfo, "results": sres.to_dict()}
        if args.meta_draws > 0 and args.meta_n > 0:
            summary["embedded"]["reliability"] = reliability_run(model, data, res, args)

    if "photos" in parts:
        from jaxlrp.models import efficientnet_lite0

        model = efficientnet_lite0()
        data = photos_batches(2 if args.quick else None)
        k = data[0][0].shape[0]
        desc = (f"(b) EfficientNet-Lite0 (ImageNet weights) on the {k} bundled photos "
                "(no masks: Localisation not evaluated)")
        res, info = run_part("photos", model, data, args, desc)
        summary["photos"] = {"info": info, "results": res.to_dict()}

    d = {"seconds": time.perf_counter() - t_all, "n": n, "quick": args.quick, "parts": summary}
    # through JSON first, so that the tables are built from exactly what the file stores
    # (and --from-json rebuilds the same markdown)
    d = json.loads(json.dumps(_clean(d)))
    write_tables(args.out, d, f"`benchmarks/reproduce_paper.py{' --quick' if args.quick else ''}`")
    return 0


TITLES = {"embedded": "(a) Default VGG, embedded dataset",
          "photos": "(b) EfficientNet-Lite0, bundled photos"}


def recompute(path: Path, out: Path) -> None:
    """Rebuild paper_table.md / .json in ``out`` from a results file: verdicts, sanity
    comparisons and reliability statistics are recomputed from the stored per-example
    scores (no model is run)."""
    d = json.loads(Path(path).read_text())
    write_tables(out, d, f"`benchmarks/reproduce_paper.py{' --quick' if d['quick'] else ''}` "
                 "(scores), verdicts recomputed from the per-example scores in this file by "
                 "`benchmarks/reproduce_paper.py --from-json benchmarks/results/paper_table.json`")


def build(d: dict) -> tuple[list[str], dict]:
    """(markdown sections, the json's parts with derived statistics) from a results dict."""
    sections, summary = [], {}
    for name, part in d["parts"].items():
        title = TITLES[name]
        if "results" not in part:
            summary[name] = part
            sections.append(f"## {title}\n\n**Not evaluated**: {part['not_evaluated']}.\n"
                            if "not_evaluated" in part else f"## {title}\n\nNot evaluated.\n")
            continue
        res = Results.from_dict(part["results"])
        rows = verdict(res.scores, _metric_dicts(res), list(res.explainers))
        sections.append(part_markdown(title, res, rows, part["info"]))
        new = {"info": part["info"], "verdict": rows, "results": part["results"]}
        if "sanity" in part:
            s = part["sanity"]
            sres = Results.from_dict(s["results"])
            new["sanity"] = {"info": s["info"], "results": s["results"],
                             "comparisons": compare(sres.scores, _metric_dicts(sres),
                                                    list(sres.explainers))}
            sections.append(sanity_markdown(s))
        if "reliability" in part:
            rel = {k: v for k, v in part["reliability"].items() if k != "stats"}
            new["reliability"] = {**rel, "stats": PM.reliability_stats(rel)}
            sections.append(reliability_markdown(rel))
        summary[name] = new
    return sections, summary


def write_tables(out: str | Path, d: dict, generated_by: str) -> None:
    """Write paper_table.md / .json in ``out`` from a results dict (see :func:`build`)."""
    sections, summary = build(d)
    total = d["seconds"]
    head = [
        "# Reproducing the evaluation of arXiv 2405.12175 with jaxlrp",
        "",
        "Claim: the hybrid (Grad-CAM++ denoised x LRP, blurred) beats both Grad-CAM and LRP "
        "on Complexity and at least one of them on Faithfulness, Robustness, Localisation and "
        "Randomisation. Explainers and metrics run with their defaults (no tuning); "
        "metrics: `jaxlrp.metrics.default_suite()` (FaithfulnessCorrelation, AvgSensitivity, "
        "Sparseness, RelevanceRankAccuracy, RandomLogit with 2-D SSIM). Grad-CAM++ is shown "
        "too (the hybrid's CAM), but the verdict uses the paper's baselines Grad-CAM and LRP.",
        "",
        f"Generated by {generated_by} (jaxlrp {jaxlrp.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, CPU-only JAX); "
        f"the scoring run took {total:.0f} s (the compute time of each part is given in its "
        "section).",
        "",
    ]
    text = "\n".join(head + sections)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "paper_table.md").write_text(text)
    Path(out, "paper_table.json").write_text(json.dumps(
        _clean({"seconds": total, "n": d["n"], "quick": d["quick"], "parts": summary}),
        indent=1))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
