"""benchmarks/bench_floor.py: its smoke size writes consistent result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_run_writes_ratios_that_match_its_calls(tmp_path):
    env = {**os.environ, "JAXLRP_BENCH_RESULTS": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_floor.py"),
                          "--tiny", "--name", "t"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads((tmp_path / "t.json").read_text())
    assert set(d["calls"]) == {"lrp", "floor_lrp", "hybrid", "floor_hybrid"}
    for a in ("lrp", "hybrid"):
        rounds = [ca["wall"] / cb["wall"]
                  for ca, cb in zip(d["calls"][a], d["calls"][f"floor_{a}"], strict=True)]
        assert d["ratios"][a]["rounds"] == pytest.approx(rounds)
        assert len(rounds) == 2 and all(r > 0 for r in rounds)
        assert d["temp_mib"][a] > 0
    md = (tmp_path / "t.md").read_text()
    assert "lrp / its floor" in md and "hybrid / its floor" in md
