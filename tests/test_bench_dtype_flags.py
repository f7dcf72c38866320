"""benchmarks/bench_dtype_flags.py: statistics, verdicts and result files from synthetic
timings (the timing itself is not tested here: `--tiny` is its smoke test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_dtype_flags",
                                               ROOT / "benchmarks" / "bench_dtype_flags.py")
DF = importlib.util.module_from_spec(_spec)
sys.modules["bench_dtype_flags"] = DF
_spec.loader.exec_module(DF)

INFO = {"date_utc": "2026-12-01T00:00:00+00:00", "cpu_count": 2, "cpu": "x86_64",
        "platform": "cpu", "devices": 1, "loadavg": [1.0, 1.0, 1.0],
        "loadavg_end": [1.0, 1.0, 1.0],
        "versions": {k: "0" for k in ("jax", "flax", "torch", "captum", "grad-cam", "quantus")}}


def test_stats_and_paired_ratios():
    s = DF.stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["median"], s["q25"], s["q75"], s["iqr"], s["n"]) == (3.0, 2.0, 4.0, 2.0, 5)
    r = DF.ratio_stats([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert r["pairs"] == [2.0, 2.0, 3.0] and r["ratio_of_medians"] == 2.0
    assert r["paired"]["median"] == 2.0
    with pytest.raises(ValueError):
        DF.ratio_stats([1.0], [1.0, 2.0])  # pairs must match


def test_verdict():
    assert DF.verdict(DF.ratio_stats([1.0, 1.1, 0.9, 1.0], [1.0] * 4)) == \
        "no measurable difference"
    assert DF.verdict(DF.ratio_stats([1.5, 1.6, 1.4], [1.0] * 3)) == "slower"
    assert DF.verdict(DF.ratio_stats([0.5, 0.6, 0.4], [1.0] * 3)) == "faster"


def _child(runs: list[float], sha: str, calls: int = 0) -> dict:
    return {"xla_flags": "", "workloads": {"hybrid": {
        "compile_s": 2.0, "first": 2.1, "runs": runs, "onednn_calls": calls,
        "hlo_sha256": sha}}}


def test_build_results_both_parts():
    dtype = {"model": "default_model()", "batch": 128, "reps": 3,
             "timing": {"float32": {"first": 3.0, "runs": [0.8, 0.8, 0.8]},
                        "bfloat16": {"first": 4.0, "runs": [1.2, 1.2, 1.2]}},
             "max_abs_map_diff": 0.087, "mean_abs_map_diff": 0.001,
             "map_dtype_bfloat16": "bfloat16", "bf16_prediction_agreement": 0.99}
    flags = {"flag": DF.ONEDNN, "base_xla_flags": "", "rounds": [
        {"order": ["off", "on"], "off": _child([1.0, 1.0], "a"),
         "on": _child([0.5, 0.5], "b", calls=4)},
        {"order": ["on", "off"], "off": _child([1.0, 1.0], "a"),
         "on": _child([0.5, 0.5], "b", calls=4)},
        {"order": ["off", "on"], "off": {"error": "Unknown flag", "returncode": 1},
         "on": _child([9.0, 9.0], "b")},
    ]}
    figures, md = DF.build_results(dtype, flags, INFO, "python b.py")
    d = figures["dtype"]
    assert d["bf16_over_f32"]["ratio_of_medians"] == pytest.approx(1.5)
    assert d["verdict"] == "slower" and d["max_abs_map_diff"] == 0.087
    s = figures["onednn"]["summary"]["hybrid"]
    # the failed round is left out: 4 runs a side, from the two complete rounds
    assert s["on"]["n"] == 4 and s["on_over_off"]["ratio_of_medians"] == pytest.approx(0.5)
    assert s["verdict"] == "faster" and not s["same_program"] and s["onednn_calls_on"] == 4
    assert s["round_ratios"] == [pytest.approx(0.5)] * 2
    assert "**Failed runs** (left out)" in md and "Unknown flag" in md
    assert "1.5x (ratio of medians)" in md and "**0.087**" in md
    assert "floor" not in d["float32"]  # no floors measured: no floor table
    json.dumps(figures)
    dtype["floors"] = {"float32": {"median": 0.4, "first": 1.5},
                       "bfloat16": {"median": 0.8, "first": 2.0}}
    figures, md = DF.build_results(dtype, None, INFO, "python b.py")
    assert figures["dtype"]["float32"]["over_floor"] == pytest.approx(2.0)
    assert figures["dtype"]["bfloat16"]["over_floor"] == pytest.approx(1.5)
    assert figures["dtype"]["bfloat16"]["over_floor_incl_compile"] == pytest.approx(2.0)
    assert "| hybrid / floor |" in md or "hybrid / floor" in md


def test_same_program_means_no_effect_whatever_the_timings():
    flags = {"flag": DF.ONEDNN, "base_xla_flags": "", "rounds": [
        {"order": ["off", "on"], "off": _child([1.0, 1.0], "a"),
         "on": _child([1.3, 1.3], "a")}]}
    s = DF.summarise_flags(flags)["hybrid"]
    assert s["same_program"] and s["verdict"] == "none: the same compiled program"
    figures, md = DF.build_results(None, flags, INFO, "python b.py")
    assert "dtype" not in figures and "## dtype" not in md
    assert "| hybrid |" in md and "| yes |" in md


def test_all_rounds_failed():
    flags = {"flag": DF.ONEDNN, "base_xla_flags": "", "rounds": [
        {"order": ["off", "on"], "off": {"error": "boom", "returncode": 1},
         "on": {"error": "boom", "returncode": 1}}]}
    figures, md = DF.build_results(None, flags, INFO, "python b.py")
    assert figures["onednn"]["summary"] == {} and "boom" in md
