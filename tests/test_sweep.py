"""benchmarks/sweep.py: its variants are the library's hybrid where they should be, the
default variant scores as ``evaluate``'s hybrid, and ``--from-json`` rebuilds the markdown."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp.data import embedded
from jaxlrp.models import default_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "sweep.py")
SW = importlib.util.module_from_spec(_spec)
sys.modules["bench_sweep"] = SW  # dataclasses look their module up while the class is built
_spec.loader.exec_module(SW)


@pytest.fixture(scope="module")
def batch():
    d = embedded("test", n=2, seed=0)
    return default_model(), jnp.asarray(d.images), jnp.asarray(d.labels)


def test_variants_from_parts_are_the_library_maps(batch):
    model, x, t = batch
    cam, rel = SW.parts(model, x, t)
    full = jaxlrp.hybrid(model, x, t, return_parts=True)
    ids = {k: v for k, _, v in SW.ABLATION}
    # the full hybrid built from the parts is jaxlrp.hybrid's map
    np.testing.assert_allclose(SW._maps(ids["hybrid"], cam, rel), full.hybrid, atol=1e-5)
    # a swept value is the library's hybrid explainer with that option (the metrics call it)
    assert SW.sweep_variant("threshold", 0.4).explainer == jaxlrp.explainers.get(
        "hybrid", threshold=0.4)
    assert SW.Variant().explainer == jaxlrp.explainers.get("hybrid")
    # no blur is the unblurred product; the CAM alone is the hybrid's CAM
    assert SW.sweep_variant("sigma", 0.0) == ids["denoised_x_lrp"]
    np.testing.assert_allclose(SW._maps(ids["denoised_x_lrp"], cam, rel),
                               jnp.clip(full.product, 0, 1), atol=1e-5)
    np.testing.assert_allclose(SW._maps(ids["cam"], cam, rel), full.cam, atol=1e-6)
    # blur of LRP alone differs from LRP alone, and a variant explains like its maps
    assert not np.allclose(SW._maps(ids["blur_lrp"], cam, rel), SW._maps(ids["lrp"], cam, rel))
    np.testing.assert_allclose(ids["blur_cam"](model, x, t), SW._maps(ids["blur_cam"], cam, rel),
                               atol=1e-6)


def _fake_document() -> dict:
    """A results document of every sweep and the ablation with random per-image scores."""
    spec = SW.plan(list(SW.SWEEPS), True)
    rng = np.random.default_rng(0)
    ids = tuple(spec["variants"])
    metrics = tuple(SW.MetricInfo(m.name, m.category, m.higher_is_better)
                    for m in jaxlrp.metrics.default_suite())
    scores = {v: {m.name: rng.uniform(0, 1, 6) for m in metrics} for v in ids}
    scores[ids[0]][metrics[0].name][2] = np.nan  # a failed image
    res = SW.Results(ids, metrics, scores, np.zeros(6, np.int64))
    info = {**SW.U.machine(), "loadavg_end": [0.0, 0.0, 0.0]}
    return SW.assemble(spec, {"vgg": (res, 1.0)}, info, n=6, batch_size=3, key=0,
                       command="python benchmarks/sweep.py --test", name="sweep")


def test_from_json_rebuilds_the_markdown_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLRP_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(SW.U, "RESULTS", tmp_path)
    md = SW.write(_fake_document())
    assert "### Sweep: reduce" in md and "#### Complexity: blur or multiplication?" in md
    assert "n = 5" in md  # the NaN image is left out of its mean
    (tmp_path / "sweep.md").unlink()
    assert SW.main(["--from-json", str(tmp_path / "sweep.json")]) == 0
    assert (tmp_path / "sweep.md").read_text() == md
    assert (tmp_path / "sweep_vgg.png").is_file()
    assert (tmp_path / "sweep_ablation_vgg.png").is_file()


@pytest.mark.slow
def test_default_variant_scores_equal_evaluate(tmp_path, monkeypatch):
    monkeypatch.setattr(SW.U, "RESULTS", tmp_path)
    d = SW.collect(["vgg"], n=2, batch_size=2, sweeps=["threshold"], ablation=False,
                   values={"threshold": (0.2,)}, progress=False)
    res = jaxlrp.evaluate(default_model(), embedded("test", n=2, seed=0), ["hybrid"],
                          batch_size=2, key=0, progress=False)
    mine = d["models"]["vgg"]["results"]["scores"][SW.Variant().id]
    for m in res.metrics:
        np.testing.assert_allclose(mine[m.name], res.scores["hybrid"][m.name], rtol=1e-4,
                                   atol=1e-6, err_msg=m.name)
    assert SW.write(d).count("(default)") == 1


def test_missing_weights_name_the_file_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr(SW, "model_path", lambda name: tmp_path / f"reference_{name}.msgpack")
    with pytest.raises(SystemExit, match=r"reference_convnext\.msgpack.*"
                       r"python benchmarks/train_reference_models.py convnext"):
        SW.load_model("convnext")


def test_default_models_skip_an_intermediate_checkpoint(monkeypatch, tmp_path):
    from jaxlrp import checkpoint
    from jaxlrp.models.default import DEFAULT_PATH

    part = tmp_path / "reference_vit.msgpack"
    checkpoint.save(part, default_model(), metadata={
        "epochs_done": 7, "recipe": {"phases": [[40, 0.002], [14, 0.001]]}})
    paths = {"vgg": DEFAULT_PATH, "convnext": tmp_path / "missing.msgpack", "vit": part}
    monkeypatch.setattr(SW, "model_path", paths.get)
    models, skipped = SW.default_models()
    assert models == ["vgg"] and list(skipped) == ["vit"]
    assert "epoch 7 of 54" in skipped["vit"] and "--models vit" in skipped["vit"]


def test_blur_vs_multiplication_answer_follows_the_data():
    rng = np.random.default_rng(0)
    n = 40
    base = rng.uniform(0.3, 0.4, n)
    scores = {"cam": base, "lrp": base - 0.05, "cam_x_lrp": base + 0.2,
              "denoised_x_lrp": base + 0.25, "hybrid": base + 0.21,
              "blur_lrp": base - 0.1, "blur_cam": base - 0.02}
    scores = {k: {"Sparseness": v + rng.normal(0, 0.005, n)} for k, v in scores.items()}
    res = SW.Results(tuple(scores), (SW.MetricInfo("Sparseness", "Complexity", True),), scores,
                     np.zeros(n, np.int64))
    st = SW.steps(res, {k: k for k in scores})
    assert st["best_single"] == "cam"
    assert "comes from the multiplication" in st["answer"]
    assert st["answer"].endswith("not from the blur, which makes the maps less sparse.")
    rows = {r["step"]: r for r in st["rows"]}
    assert rows["blur"]["outcome"] == "worse" and rows["multiplication"]["outcome"] == "better"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit", "convnext"])
def test_parts_give_the_hybrid_on_other_architectures(batch, arch):
    from jaxlrp.models import convnext, vit

    model = {"vit": vit.build_vit, "convnext": convnext.build_convnext}[arch](0)
    _, x, t = batch
    cam, rel = SW.parts(model, x, t)
    full = jaxlrp.hybrid(model, x, t, return_parts=True)
    np.testing.assert_allclose(cam, full.cam, atol=1e-6)
    np.testing.assert_allclose(SW._maps(SW.Variant(), cam, rel), full.hybrid, atol=1e-5)
