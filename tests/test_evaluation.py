"""Tests of the evaluation driver (jaxlrp.evaluation): statistics, skips, failures, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp import cam
from jaxlrp.errors import ExplanationError
from jaxlrp.evaluation import Results, evaluate
from jaxlrp.metrics import default_suite, faithfulness_correlation, sparseness
from jaxlrp.models import VGG

H = 16  # tiny images: SSIM needs >= 7 pixels, FaithfulnessCorrelation's 224-subset < H*H


def tiny_model() -> VGG:
    return VGG(num_classes=4, widths=(4, 8), dense=(8,), input_size=H, rngs=nnx.Rngs(0))


def saliency(model, x, target):
    """|d logit_target / dx| summed over channels: (B, H, W)."""

    def score(xx):
        return jnp.take_along_axis(model(xx), target[:, None], axis=1).sum()

    return jnp.abs(jax.grad(score)(x)).sum(-1)


def gradcam(model, x, target):
    return cam.gradcam(model, x, target)


EXPLAINERS = {"gradcam": gradcam, "saliency": saliency}


def make_batches(n_batches: int, b: int, seed: int = 0, masks: bool = True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.uniform(0, 1, (b, H, H, 3)).astype(np.float32)
        y = rng.integers(0, 4, b).astype(np.int32)
        m = np.zeros((b, H, H), bool)
        for i in range(b):
            r, c = rng.integers(0, H - 6, 2)
            m[i, r:r + 6, c:c + 6] = True
        out.append((x, y, m if masks else None))
    return out


@pytest.fixture(scope="module")
def run():
    model = tiny_model()
    batches = make_batches(2, 5)
    res = evaluate(model, batches, EXPLAINERS, key=3, progress=False)
    return model, batches, res


@pytest.mark.slow
def test_table_shape_and_stats(run):
    _, _, res = run
    names = [m.name for m in default_suite()]
    assert res.explainers == ("gradcam", "saliency")
    assert [m.name for m in res.metrics] == names
    table = res.table()
    assert set(table) == {"gradcam", "saliency"}
    for e in res.explainers:
        assert list(table[e]) == names
        for m in names:
            raw = res.scores[e][m]
            assert raw.shape == (10,) and np.isfinite(raw).all()
            mean, se = table[e][m]
            np.testing.assert_allclose(mean, raw.mean(), rtol=1e-12)
            np.testing.assert_allclose(se, raw.std(ddof=1) / np.sqrt(10), rtol=1e-12)
    assert not res.failures and not res.skipped
    md = res.to_markdown()
    assert md.count("\n| ") == 2 and "Sparseness" in md and "±" in md
    back = Results.from_json(res.to_json())
    for e in res.explainers:
        for m in names:
            np.testing.assert_array_equal(back.scores[e][m], res.scores[e][m])


def test_scores_match_direct_metric_calls(run):
    """The driver passes the right maps, targets and per-batch keys to each metric."""
    model, batches, res = run
    x, y, _ = batches[1]
    maps = gradcam(model, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(res.scores["gradcam"]["Sparseness"][5:],
                               np.asarray(sparseness(maps)), rtol=1e-5, atol=1e-7)
    j = [m.name for m in default_suite()].index("FaithfulnessCorrelation")
    k = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 1), j)
    fc = faithfulness_correlation(model, x, y, maps, k, nr_runs=10, subset_size=224)
    np.testing.assert_allclose(res.scores["gradcam"]["FaithfulnessCorrelation"][5:],
                               np.asarray(fc), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(res.targets, np.concatenate([b[1] for b in batches]))


def test_predicted_target_and_dataset_input():
    from jaxlrp.data import Dataset

    model = tiny_model()
    (x, y, m), = make_batches(1, 10, seed=1)
    ds = Dataset(x, y, m, ("a", "b", "c", "d"))
    res = evaluate(model, ds, {"saliency": saliency}, ["Sparseness"], target="predicted",
                   batch_size=5, progress=False)
    np.testing.assert_array_equal(res.targets, np.asarray(model(jnp.asarray(x))).argmax(-1))
    assert res.scores["saliency"]["Sparseness"].shape == (10,)
    assert res.meta["num_batches"] == 2


@pytest.mark.slow
def test_int_target_explains_that_class_for_every_example():
    """``target`` takes the explainers' spellings (an int, "predicted") plus "label"."""
    model = tiny_model()
    (x, y, m), = make_batches(1, 4, seed=2)
    res = evaluate(model, [(x, y, m)], {"saliency": saliency}, ["Sparseness"], target=2,
                   progress=False, chart=False)
    np.testing.assert_array_equal(res.targets, [2, 2, 2, 2])
    ref = sparseness(saliency(model, jnp.asarray(x), jnp.full((4,), 2)))
    np.testing.assert_allclose(res.scores["saliency"]["Sparseness"], np.asarray(ref), rtol=1e-6)
    with pytest.raises(ExplanationError, match=r"target: expected a class in \[0, 4\), got 7"):
        evaluate(model, [(x, y, m)], {"saliency": saliency}, ["Sparseness"], target=7,
                 progress=False, chart=False)
    with pytest.raises(ExplanationError, match="target: expected 'label', 'predicted' or an int"):
        evaluate(model, [(x, y, m)], {"saliency": saliency}, ["Sparseness"], target=True,
                 progress=False)


def test_localisation_skipped_without_masks(capsys):
    model = tiny_model()
    batches = make_batches(1, 4, masks=False)
    res = evaluate(model, batches, {"saliency": saliency},
                   ["Sparseness", "RelevanceRankAccuracy"], progress=False)
    assert [m.name for m in res.metrics] == ["Sparseness"]
    assert "RelevanceRankAccuracy" in res.skipped
    assert "skipping RelevanceRankAccuracy" in capsys.readouterr().err
    assert "skipped RelevanceRankAccuracy" in res.to_markdown()
    assert np.isfinite(res.scores["saliency"]["Sparseness"]).all()


@pytest.mark.slow
def test_bad_batches_recorded_and_rest_computed(capsys):
    model = tiny_model()
    good = make_batches(2, 3, seed=2)
    nan = (good[0][0].copy(), good[0][1], good[0][2])
    nan[0][1, 2, 3, 0] = np.nan
    small = (np.zeros((3, 8, 8, 3), np.float32), good[0][1], None)  # the VGG's dense breaks
    res = evaluate(model, [good[0], nan, small, good[1]], {"saliency": saliency},
                   ["Sparseness", "RelevanceRankAccuracy"], progress=False)
    failed = {f["batch"]: f for f in res.failures}
    assert set(failed) == {1, 2}
    assert "NaN" in failed[1]["error"] and "example(s) [1]" in failed[1]["error"]
    assert "shape" in failed[2]["error"]
    s = res.scores["saliency"]["Sparseness"]
    assert s.shape == (12,)
    assert np.isfinite(s[:3]).all() and np.isfinite(s[9:]).all() and np.isnan(s[3:9]).all()
    np.testing.assert_allclose(
        s[9:], np.asarray(sparseness(saliency(model, jnp.asarray(good[1][0]),
                                              jnp.asarray(good[1][1])))), rtol=1e-5)
    assert (res.targets[3:9] == -1).all()
    assert res.count("saliency", "Sparseness") == 6
    assert "failed batch 1" in res.to_markdown()
    assert "batch 2 failed" in capsys.readouterr().err


def test_every_batch_failing_raises():
    bad = (np.full((2, H, H, 3), np.nan, np.float32), np.zeros(2, np.int32), None)
    with pytest.raises(ExplanationError, match="every batch failed"):
        evaluate(tiny_model(), [bad], {"saliency": saliency}, ["Sparseness"], progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(target="best"), "target"),
    (dict(explainers=42), "explainers"),
    (dict(metrics=["NoSuchMetric"]), "NoSuchMetric"),
    (dict(batch_size=0), "batch_size"),
    (dict(key="seed"), "key"),
])
def test_argument_errors(kwargs, match):
    args = dict(explainers={"saliency": saliency}, metrics=["Sparseness"], progress=False)
    args.update(kwargs)
    with pytest.raises(ExplanationError, match=match):
        evaluate(tiny_model(), make_batches(1, 2), **args)


@pytest.mark.slow
def test_output_files(tmp_path):
    model = tiny_model()
    res = evaluate(model, make_batches(2, 3), {"saliency": saliency},
                   ["Sparseness", "RelevanceRankAccuracy"], out_dir=tmp_path, progress=False)
    for name in ("results.json", "results.md", "results.png", "run.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == [
        "batch_000000.npz", "batch_000001.npz"]
    d = json.loads((tmp_path / "results.json").read_text())
    np.testing.assert_allclose(d["summary"]["saliency"]["Sparseness"]["mean"],
                               res.mean("saliency", "Sparseness"))
    assert (tmp_path / "results.md").read_text() == res.to_markdown()
    # a second run with another configuration (metrics, or model weights) must not silently
    # mix with this one
    with pytest.raises(ExplanationError, match="another configuration"):
        evaluate(model, make_batches(2, 3), {"saliency": saliency}, ["Sparseness"],
                 out_dir=tmp_path, progress=False)
    other = VGG(num_classes=4, widths=(4, 8), dense=(8,), input_size=H, rngs=nnx.Rngs(5))
    with pytest.raises(ExplanationError, match="another configuration"):
        evaluate(other, make_batches(2, 3), {"saliency": saliency},
                 ["Sparseness", "RelevanceRankAccuracy"], out_dir=tmp_path, progress=False)


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_evaluation import EXPLAINERS, make_batches, tiny_model
    from jaxlrp.evaluation import evaluate

    METRICS = ["FaithfulnessCorrelation", "Sparseness", "RelevanceRankAccuracy"]

    def slow(batches):
        for i, b in enumerate(batches):
            if i >= 2:
                time.sleep(2.0)  # leaves time to kill the run after the 2nd batch file
            yield b

    def run(out, slow_down=False, **kw):
        batches = make_batches(5, 3, seed=4)
        data = slow(batches) if slow_down else batches
        return evaluate(tiny_model(), data, EXPLAINERS, METRICS, key=7, out_dir=out,
                        progress=False, chart=False, **kw)

    if __name__ == "__main__":
        run(sys.argv[1], slow_down=True)
""")


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    script = tmp_path / "run_eval.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "interrupted"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second = out / "batches" / "batch_000001.npz"
    deadline = time.time() + 120
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.exists(), proc.stderr.read().decode()[-2000:]
    assert not (out / "results.json").exists()  # it really was interrupted
    done = {p.name: p.stat().st_mtime_ns for p in (out / "batches").glob("*.npz")}
    assert 2 <= len(done) < 5

    sys.path.insert(0, str(tmp_path))
    try:
        import run_eval
    finally:
        sys.path.remove(str(tmp_path))
    resumed = run_eval.run(out)
    assert sorted(resumed.meta["resumed_batches"]) == sorted(int(n[6:12]) for n in done)
    assert sorted(resumed.meta["computed_batches"] + resumed.meta["resumed_batches"]) == list(
        range(5))
    for name, mtime in done.items():  # finished batches were not rewritten
        assert (out / "batches" / name).stat().st_mtime_ns == mtime
    fresh = run_eval.run(tmp_path / "fresh")
    assert fresh.meta["resumed_batches"] == []
    for e in fresh.explainers:
        for m in ("FaithfulnessCorrelation", "Sparseness", "RelevanceRankAccuracy"):
            np.testing.assert_allclose(resumed.scores[e][m], fresh.scores[e][m], rtol=1e-6,
                                       atol=1e-7)
            assert resumed.mean(e, m) == pytest.approx(fresh.mean(e, m), rel=1e-6, abs=1e-7)
    # resume=False recomputes everything
    again = run_eval.run(out, resume=False)
    assert again.meta["resumed_batches"] == [] and len(again.meta["computed_batches"]) == 5


def test_cli_on_a_checkpoint(tmp_path, capsys):
    import argparse

    from jaxlrp import checkpoint
    from jaxlrp.cli.evaluate import add_cli_arguments, run_cli

    path = tmp_path / "vgg.msgpack"
    checkpoint.save(path, VGG(widths=(4, 8), dense=(8,), rngs=nnx.Rngs(1)))
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--model", str(path), "--data", "embedded", "--n", "4",
                              "--explainers", "gradcam", "--metrics",
                              "Sparseness,RelevanceRankAccuracy", "--batch-size", "4",
                              "--out", str(out), "--no-progress"])
    assert run_cli(args) == 0
    printed = capsys.readouterr().out
    assert "| gradcam |" in printed and "RelevanceRankAccuracy" in printed
    res = Results.from_json(out / "results.json")
    assert res.scores["gradcam"]["RelevanceRankAccuracy"].shape == (4,)
    bad = parser.parse_args(["--model", str(tmp_path / "missing.msgpack")])
    assert run_cli(bad) == 2
    assert "--model" in capsys.readouterr().err
