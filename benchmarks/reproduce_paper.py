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

Part (b) runs only when asked (``--parts embedded,photos``): with 4 photos and labels that
are the model's own top-1 (``jaxlrp/assets/photos/labels.json``, wrong for astronaut and
rocket) it is a smoke run, not a test of the claim.

Usage::

    python benchmarks/reproduce_paper.py            # 500 embedded test images
    python benchmarks/reproduce_paper.py --quick    # 50 images, for a smoke test
    python benchmarks/reproduce_paper.py --n 1000 --batch-size 100
    python benchmarks/reproduce_paper.py --from-json benchmarks/results/paper_table.json
        # recompute the verdicts from the stored per-example scores, no model run

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

import numpy as np

import jaxlrp
from jaxlrp.cli.evaluate import photos_batches
from jaxlrp.errors import ExplanationError
from jaxlrp.evaluation import Results, evaluate

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
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="embedded test images (default 500)")
    p.add_argument("--quick", action="store_true", help="50 images and 2 photos (smoke test)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="key of the random metrics")
    p.add_argument("--parts", default="embedded",
                   help="comma-separated parts to run: embedded, photos (see the module "
                   "docstring: with 4 photos part (b) is a smoke run, not a test of the claim)")
    p.add_argument("--model", default=None,
                   help="checkpoint to use instead of the shipped default model (part a)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="recompute the verdicts from the per-example scores in a results file "
                   "(no model is run) and rewrite the tables in --out")
    args = p.parse_args(argv)
    if args.from_json:
        recompute(Path(args.from_json), Path(args.out))
        return 0
    n = 50 if args.quick else args.n
    if args.quick:
        args.batch_size = min(args.batch_size, 25)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sections, summary = [], {}
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
        sections.append(f"## (a) Default VGG, embedded dataset\n\n**Not evaluated**: {why}.\n")
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
        rows = verdict(res.scores, _metric_dicts(res), list(res.explainers))
        sections.append(part_markdown("(a) Default VGG, embedded dataset", res, rows, info))
        summary["embedded"] = {"info": info, "verdict": rows, "results": res.to_dict()}

    if "photos" in parts:
        from jaxlrp.models import efficientnet_lite0

        model = efficientnet_lite0()
        data = photos_batches(2 if args.quick else None)
        k = data[0][0].shape[0]
        desc = (f"(b) EfficientNet-Lite0 (ImageNet weights) on the {k} bundled photos "
                "(no masks: Localisation not evaluated)")
        res, info = run_part("photos", model, data, args, desc)
        rows = verdict(res.scores, _metric_dicts(res), list(res.explainers))
        sections.append(part_markdown("(b) EfficientNet-Lite0, bundled photos", res, rows, info))
        summary["photos"] = {"info": info, "verdict": rows, "results": res.to_dict()}

    total = time.perf_counter() - t_all
    write_tables(args.out, sections, summary, total, n, args.quick,
                 f"`benchmarks/reproduce_paper.py{' --quick' if args.quick else ''}`")
    return 0


TITLES = {"embedded": "(a) Default VGG, embedded dataset",
          "photos": "(b) EfficientNet-Lite0, bundled photos"}


def recompute(path: Path, out: Path) -> None:
    """Recompute the verdicts from the per-example scores of a results file (no model
    is run) and rewrite paper_table.md / .json in ``out``."""
    d = json.loads(Path(path).read_text())
    sections, summary = [], {}
    for name, part in d["parts"].items():
        if "results" not in part:
            summary[name] = part
            continue
        res = Results.from_dict(part["results"])
        rows = verdict(res.scores, _metric_dicts(res), list(res.explainers))
        sections.append(part_markdown(TITLES[name], res, rows, part["info"]))
        summary[name] = {"info": part["info"], "verdict": rows, "results": part["results"]}
    write_tables(out, sections, summary, d["seconds"], d["n"], d["quick"],
                 f"`benchmarks/reproduce_paper.py{' --quick' if d['quick'] else ''}` "
                 "(scores), verdicts recomputed from the per-example scores in this file by "
                 "`benchmarks/reproduce_paper.py --from-json benchmarks/results/paper_table.json`")


def write_tables(out: str | Path, sections: list[str], summary: dict, total: float, n: int,
                 quick: bool, generated_by: str) -> None:
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
    Path(out, "paper_table.md").write_text(text)
    Path(out, "paper_table.json").write_text(json.dumps(
        _clean({"seconds": total, "n": n, "quick": quick, "parts": summary}), indent=1))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
