"""benchmarks/reproduce_paper.py: paired tests, Holm's adjustment, verdicts, and the shipped
results file's verdicts recomputed from its own per-example scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce_paper",
                                               ROOT / "benchmarks" / "reproduce_paper.py")
RP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RP)

METRICS = [{"name": "S", "category": "Complexity", "higher_is_better": True},
           {"name": "F", "category": "Faithfulness", "higher_is_better": True},
           {"name": "R", "category": "Robustness", "higher_is_better": False}]


def test_holm_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1 = 0.5)
    np.testing.assert_allclose(RP.holm([0.03, 0.01, 0.5, 0.02]), [0.06, 0.04, 0.5, 0.06])
    adj = RP.holm([0.2, float("nan"), 0.01])
    assert np.isnan(adj[1]) and np.allclose([adj[0], adj[2]], [0.2, 0.02])


def test_paired_t_test_matches_scipy():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.1, 1, 40), rng.normal(0, 1, 40)
    c = RP.paired({"a": {"m": a}, "b": {"m": b}}, "m", "a", "b")
    assert c["n"] == 40
    np.testing.assert_allclose(c["p"], ttest_rel(a, b).pvalue, rtol=1e-10)
    np.testing.assert_allclose(c["stderr"], np.std(a - b, ddof=1) / np.sqrt(40))


def _scores(n, shifts, seed=0):
    """hybrid = baseline + shift (in the metric's better direction) + noise."""
    rng = np.random.default_rng(seed)
    out = {e: {} for e in ("gradcam", "lrp", "hybrid")}
    for m in METRICS:
        sign = 1 if m["higher_is_better"] else -1
        for e in ("gradcam", "lrp"):
            out[e][m["name"]] = rng.random(n)
        gc, lr = shifts[m["name"]]
        out["hybrid"][m["name"]] = (out["gradcam"][m["name"]] + sign * gc
                                    + 0.01 * rng.standard_normal(n))
        out["lrp"][m["name"]] = out["hybrid"][m["name"]] - sign * lr + 0.01 * rng.standard_normal(n)
    return out


def test_verdicts_holds_does_not_hold_not_significant():
    big = _scores(200, {"S": (0.1, 0.1), "F": (-0.1, 0.1), "R": (-0.1, -0.1)})
    rows = {r["category"]: r for r in RP.verdict(big, METRICS, ["gradcam", "lrp", "hybrid"])}
    assert rows["Complexity"]["verdict"] == "holds"
    assert rows["Faithfulness"]["verdict"] == "holds"  # better than one is enough
    assert rows["Robustness"]["verdict"] == "does not hold"  # worse than both
    mixed = _scores(200, {"S": (0.1, -0.1), "F": (-0.1, 0.0), "R": (0.0, 0.0)})
    rows = {r["category"]: r for r in RP.verdict(mixed, METRICS, ["gradcam", "lrp", "hybrid"])}
    assert rows["Complexity"]["verdict"] == "does not hold"  # worse than one of both
    assert rows["Faithfulness"]["verdict"] == "not significant"
    assert rows["Robustness"]["verdict"] == "not significant"
    # n = 4 with a real mean difference of the size of the noise: not significant
    tiny = _scores(4, {"S": (0.01, 0.01), "F": (0.01, 0.01), "R": (0.01, 0.01)}, seed=3)
    rows = RP.verdict(tiny, METRICS, ["gradcam", "lrp", "hybrid"])
    assert all(r["verdict"] == "not significant" for r in rows)
    # Holm over the 6 claim comparisons: every adjusted p >= its raw p
    for r in rows:
        for o in ("gradcam", "lrp"):
            assert r["vs"][o]["p_holm"] >= r["vs"][o]["p"]


def test_shipped_verdicts_follow_from_the_shipped_scores():
    from jaxlrp.evaluation import Results

    d = json.loads((ROOT / "benchmarks" / "results" / "paper_table.json").read_text())
    md = (ROOT / "benchmarks" / "results" / "paper_table.md").read_text()
    assert "photos" not in d["parts"]  # part (b) is not claimed
    for part in d["parts"].values():
        res = Results.from_dict(part["results"])
        rows = RP.verdict(res.scores, RP._metric_dicts(res), list(res.explainers))
        assert [r["verdict"] for r in rows] == [r["verdict"] for r in part["verdict"]]
        for r, shipped in zip(rows, part["verdict"], strict=True):
            for o, c in r["vs"].items():
                np.testing.assert_allclose(c["p"], shipped["vs"][o]["p"], rtol=1e-9)
            assert f"| {r['category']} | {r['metric']} |" in md
            assert f"**{r['verdict']}**" in md
