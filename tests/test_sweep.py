"""benchmarks/sweep.py: its variants are the library's hybrid where they should be, the
default variant scores as ``evaluate``'s hybrid, and ``--from-json`` rebuilds the markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
from jaxlrp.data import embedded
from jaxlrp.models import default_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sweep", ROOT / "benchmarks" / "sweep.py")
SW = importlib.util.module_from_spec(_spec)
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
    # the full hybrid and a swept value, built from the parts, are jaxlrp.hybrid's maps
    np.testing.assert_allclose(SW._maps(ids["hybrid"], cam, rel), full.hybrid, atol=1e-5)
    v = SW.sweep_variant("threshold", 0.4)
    np.testing.assert_allclose(SW._maps(v, cam, rel), jaxlrp.hybrid(model, x, t, threshold=0.4),
                               atol=1e-5)
    # no blur is the unblurred product; the CAM alone is the hybrid's CAM
    assert SW.sweep_variant("sigma", 0.0) == ids["denoised_x_lrp"]
    np.testing.assert_allclose(SW._maps(ids["denoised_x_lrp"], cam, rel),
                               jnp.clip(full.product, 0, 1), atol=1e-5)
    np.testing.assert_allclose(SW._maps(ids["cam"], cam, rel), full.cam, atol=1e-6)
    # blur of LRP alone differs from LRP alone, and the variant explains like its maps
    assert not np.allclose(SW._maps(ids["blur_lrp"], cam, rel), SW._maps(ids["lrp"], cam, rel))
    np.testing.assert_allclose(ids["blur_cam"](model, x, t), SW._maps(ids["blur_cam"], cam, rel),
                               atol=1e-6)


def test_default_scores_equal_evaluate_and_from_json_rebuilds_md(batch, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLRP_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(SW.U, "RESULTS", tmp_path)
    d = SW.collect(["vgg"], n=2, batch_size=2, sweeps=["threshold"], ablation=False,
                   values={"threshold": (0.2,)}, progress=False)
    md = SW.write(d)
    res = jaxlrp.evaluate(default_model(), embedded("test", n=2, seed=0), ["hybrid"],
                          batch_size=2, key=0, progress=False)
    mine = d["models"]["vgg"]["results"]["scores"][SW.Variant().id]
    for m in res.metrics:
        np.testing.assert_allclose(mine[m.name], res.scores["hybrid"][m.name], rtol=1e-4,
                                   atol=1e-6, err_msg=m.name)
    path = tmp_path / "sweep.json"
    assert json.loads(path.read_text())["models"]["vgg"]["summary"]["sweeps"]["threshold"]
    (tmp_path / "sweep.md").unlink()
    assert SW.main(["--from-json", str(path)]) == 0
    assert (tmp_path / "sweep.md").read_text() == md
    assert (tmp_path / "sweep_vgg.png").is_file()


def test_missing_weights_name_the_file_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr(SW, "model_path", lambda name: tmp_path / f"reference_{name}.msgpack")
    with pytest.raises(SystemExit, match=r"reference_convnext\.msgpack.*"
                       r"python benchmarks/train_reference_models.py convnext"):
        SW.load_model("convnext")


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
    rows = {r["step"]: r for r in st["rows"]}
    assert rows["blur"]["outcome"] == "worse" and rows["multiplication"]["outcome"] == "better"
