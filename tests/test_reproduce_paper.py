"""benchmarks/reproduce_paper.py: paired tests, Holm's adjustment, verdicts, and the shipped
results file's verdicts recomputed from its own per-example scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

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


# ----------------------------------------------------------------------------- sanity rows,
# reliability of the ranking, --from-json


def test_kendall_tau_matches_scipy():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=4), rng.normal(size=4)
        np.testing.assert_allclose(RP.PM.kendall_tau(a, b), kendalltau(a, b).statistic)
    a, b = [1.0, 1.0, 2.0, 3.0], [0.5, 0.2, 0.2, 0.9]  # ties on both sides (tau-b)
    np.testing.assert_allclose(RP.PM.kendall_tau(a, b), kendalltau(a, b).statistic)
    assert RP.PM.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert RP.PM.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_ranking_respects_direction():
    means = {"a": 0.1, "b": 0.3, "c": float("nan"), "d": 0.2}
    assert RP.PM.ranking(means, True) == ["b", "d", "a", "c"]
    assert RP.PM.ranking(means, False) == ["a", "d", "b", "c"]


EXPL = ("gradcam", "gradcam++", "lrp", "hybrid")
MET5 = [{"name": "S", "category": "Complexity", "higher_is_better": True},
        {"name": "R", "category": "Robustness", "higher_is_better": False}]


def _rel(draws: list[dict], ref: dict, n: int) -> dict:
    tests = {"model": {"description": "d", "std": 0.0, "kept": [[True] * n] * len(draws),
                       "scores": draws, "accuracy": {"n_images": n, "unperturbed": 0.9,
                                                     "perturbed": [0.9] * len(draws),
                                                     "unchanged": [1.0] * len(draws)}}}
    return {"info": {"draws": len(draws), "n": n, "batch_size": n, "key": 0,
                     "reference": "table", "seconds": 1.0, "load": "l"},
            "explainers": list(EXPL), "metrics": MET5, "reference": ref, "tests": tests}


def _ref(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {e: {m["name"]: (rng.random(n) + i).tolist() for m in MET5}
            for i, e in enumerate(EXPL)}


def test_reliability_is_perfect_without_perturbation():
    ref = _ref(12)
    st = RP.PM.reliability_stats(_rel([ref, ref, ref], ref, 12))["model"]
    for r in st["rows"]:
        assert r["same_ranking"] == 1.0 and r["same_best"] == 1.0
        assert r["kendall_tau"] == 1.0 and r["iac_nr"] == 1.0 and r["iec_nr"] == 1.0
    assert st["accuracy_change"] == 0.0 and st["unchanged_predictions"] == 1.0
    # a draw that swaps gradcam and hybrid everywhere: the ranking changes in that draw
    swapped = {**ref, "gradcam": ref["hybrid"], "hybrid": ref["gradcam"]}
    st = RP.PM.reliability_stats(_rel([ref, swapped], ref, 12))["model"]
    for r in st["rows"]:
        assert r["same_ranking"] == 0.5
        # swapping the ends of 4 ranks: 1 concordant, 5 discordant pairs, tau = -4/6
        np.testing.assert_allclose(r["kendall_tau"], (1.0 - 4 / 6) / 2)
        assert 0 < r["iec_nr"] < 1


def test_iec_counts_rank_positions_like_metaquantus():
    q = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0]])  # 3 explainers x 2 images
    assert RP.PM.iec_agreement(q, q) == 1.0
    q2 = q.copy()
    q2[:, 1] = [4.0, 2.0, 3.0]  # image 1: order (2, 1, 0) -> (1, 2, 0): 1 of 3 kept
    np.testing.assert_allclose(RP.PM.iec_agreement(q, q2), (3 + 1) / 6)


def _synthetic_results_file(path: Path) -> None:
    from jaxlrp.evaluation.results import MetricInfo, Results

    rng = np.random.default_rng(0)
    n = 12

    def res(metrics):
        return Results(EXPL, tuple(MetricInfo(m["name"], m["category"], m["higher_is_better"])
                                   for m in metrics),
                       {e: {m["name"]: rng.random(n) for m in metrics} for e in EXPL},
                       np.zeros(n, np.int64)).to_dict()

    sanity = [{"name": "MPRT", "category": "Randomisation", "higher_is_better": False},
              {"name": "EfficientMPRT", "category": "Randomisation", "higher_is_better": True}]
    ref = _ref(n)
    d = {"seconds": 3.0, "n": n, "quick": False, "parts": {"embedded": {
        "info": {"description": "synthetic", "batch_size": n, "key": 0, "seconds": 1.0,
                 "load": "l", "computed_batches": [0], "resumed_batches": []},
        "results": res(MET5),
        "sanity": {"info": {"n": n, "batch_size": n, "key": 0, "smprt_samples": 2,
                            "seconds": 1.0, "load": "l", "resumed_batches": []},
                   "results": res(sanity)},
        "reliability": _rel([ref, _ref(n, 1)], ref, n)}}}
    path.write_text(json.dumps(d))


def test_from_json_rebuilds_every_section(tmp_path):
    _synthetic_results_file(tmp_path / "in.json")
    RP.main(["--from-json", str(tmp_path / "in.json"), "--out", str(tmp_path / "a")])
    RP.main(["--from-json", str(tmp_path / "a" / "paper_table.json"),
             "--out", str(tmp_path / "b")])
    md_a = (tmp_path / "a" / "paper_table.md").read_text()
    assert md_a == (tmp_path / "b" / "paper_table.md").read_text()
    assert ((tmp_path / "a" / "paper_table.json").read_text()
            == (tmp_path / "b" / "paper_table.json").read_text())
    for head in ("### Verdict of the paper's claim", "## Sanity checks",
                 "own Holm family", "Adebayo et al. (2018", "## Reliability of the ranking",
                 "### Model perturbation", "IAC_NR"):
        assert head in md_a
    d = json.loads((tmp_path / "a" / "paper_table.json").read_text())["parts"]["embedded"]
    assert {r["metric"] for r in d["sanity"]["comparisons"]} == {"MPRT", "EfficientMPRT"}
    assert all("p_holm" in r["vs"]["lrp"] for r in d["sanity"]["comparisons"])
    assert set(d["reliability"]["stats"]) == {"model"}


@pytest.mark.slow
def test_tiny_run_zero_perturbation_and_from_json(tmp_path, monkeypatch):
    """End to end at a tiny size: with zero noise the ranking never changes, and
    --from-json rebuilds the run's markdown (up to the "Generated by" line)."""
    monkeypatch.setenv("JAXLRP_BENCH_RESULTS", str(tmp_path / "run"))
    RP.main(["--n", "4", "--batch-size", "4", "--sanity-n", "2", "--smprt-samples", "2",
             "--meta-draws", "2", "--meta-n", "4", "--meta-model-std", "0",
             "--meta-input-std", "0", "--no-progress"])
    d = json.loads((tmp_path / "run" / "paper_table.json").read_text())["parts"]["embedded"]
    for test in d["reliability"]["stats"].values():
        assert test["accuracy_change"] == 0.0
        for r in test["rows"]:
            assert r["same_ranking"] == 1.0 and r["kendall_tau"] == 1.0
            assert r["iec_nr"] == 1.0
    RP.main(["--from-json", str(tmp_path / "run" / "paper_table.json"),
             "--out", str(tmp_path / "re")])

    def body(p):
        return [ln for ln in p.read_text().splitlines() if not ln.startswith("Generated by")]

    assert body(tmp_path / "run" / "paper_table.md") == body(tmp_path / "re" / "paper_table.md")
