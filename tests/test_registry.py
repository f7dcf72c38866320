"""One registry per extension point: a CAM method, a composite or a metric registered in
one place is found by the explainers, the hybrid, ``evaluate`` and the command line."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import cli, evaluation, explainers, metrics
from jaxlrp._hybrid import cam_methods, hybrid
from jaxlrp._lrp import composites, rules
from jaxlrp.cam import CAMS, register_cam
from jaxlrp.cli import evaluate as cli_evaluate
from jaxlrp.errors import ExplanationError
from jaxlrp.evaluation.inputs import _resolve_metrics
from jaxlrp.metrics import helpers
from jaxlrp.models.vgg import VGG

H = 16


@pytest.fixture(scope="module")
def setup():
    model = VGG(num_classes=4, widths=(4, 8), dense=(8,), input_size=H, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.random((3, H, H, 3), dtype=np.float32)
    y = np.array([0, 2, 3], np.int32)
    masks = np.zeros((3, H, H), bool)
    masks[:, 4:10, 3:12] = True
    return model, x, y, masks


@pytest.fixture
def abs_gradcam():
    """A CAM method registered in one place (one decorator), removed afterwards."""

    @register_cam("absgradcam", title="|Grad-CAM|", aliases=("abs_gradcam",))
    def absgradcam(acts, grads):  # (B, h, w, C) x 2 -> (B, h, w)
        return jnp.abs(jaxlrp.cam.weighted_sum(acts, jnp.mean(grads, axis=(1, 2))))

    yield "absgradcam"
    CAMS.remove("absgradcam")


def _reference_abs_gradcam(model, x, y):
    raw = jaxlrp.gradcam(model, x, y, relu=False, normalize=False, upsample=False)
    return jaxlrp.cam.postprocess(jnp.abs(raw), x.shape[1:3], relu=True, upsample=True,
                                  normalize=True)


@pytest.mark.slow
def test_registered_cam_found_everywhere(setup, abs_gradcam):
    model, x, y, masks = setup
    ref = _reference_abs_gradcam(model, x, y)
    # explainers.get, by name and alias
    np.testing.assert_allclose(explainers.get("absgradcam")(model, x, y), ref, atol=1e-5)
    assert explainers.get("abs_gradcam") == explainers.get("absgradcam")
    assert "absgradcam" in explainers.NAMES and explainers.title("absgradcam") == "|Grad-CAM|"
    # the hybrid's cam= option: its CAM panel is the method's map
    parts = hybrid(model, x, y, cam="abs_gradcam", return_parts=True)
    np.testing.assert_allclose(parts.cam, ref, atol=1e-5)
    assert "absgradcam" in cam_methods()
    # the command line's choice lists and figure titles
    args = cli.build_parser().parse_args(["explain", "a.png", "--method", "absgradcam",
                                          "--compare"])
    plan = cli.make_plan(args)
    assert plan.panels() == ["absgradcam", "lrp", "hybrid"]
    assert [cli.panel_title(k) for k in plan.panels()] == ["|Grad-CAM|", "LRP", "hybrid"]
    args = cli.build_parser().parse_args(["explain", "a.png", "--cam", "abs_gradcam"])
    assert cli.make_plan(args).hybrid_options["cam"] == "absgradcam"
    # evaluate, by name
    res = evaluation.evaluate(model, [(x, y, masks)], ["absgradcam"], metrics=["Sparseness"],
                              progress=False, chart=False)
    np.testing.assert_allclose(res.scores["absgradcam"]["Sparseness"],
                               np.asarray(metrics.sparseness(ref)), atol=1e-5)


def test_unregistered_cam_is_gone(abs_gradcam):
    CAMS.remove(abs_gradcam)
    try:
        assert abs_gradcam not in explainers.names() and abs_gradcam not in cli.methods()
        with pytest.raises(ExplanationError, match="explainer: unknown name 'absgradcam'"):
            explainers.get(abs_gradcam)
        with pytest.raises(ExplanationError, match="cam: expected one of"):
            hybrid(None, np.zeros((1, 8, 8, 3), np.float32), cam=abs_gradcam)
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["explain", "a.png", "--method", abs_gradcam])
    finally:  # the fixture removes it again
        register_cam(abs_gradcam)(lambda acts, grads: acts.sum(-1))


def test_duplicate_names_raise():
    with pytest.raises(ExplanationError, match="already registered"):
        register_cam("gradcam_pp")(lambda acts, grads: acts.sum(-1))
    with pytest.raises(ExplanationError, match="already registered"):
        metrics.metric("sparseness", category="Complexity", higher_is_better=True)(
            lambda a: a.sum())


def test_registered_composite_found_everywhere(setup, monkeypatch):
    model, x, y, _ = setup

    def zplus_everywhere():
        return composites.layer_map(conv=rules.ZPlus(), dense=rules.ZPlus())

    monkeypatch.setitem(composites.PRESETS, "zplus_everywhere", zplus_everywhere)
    r_name = explainers.get("lrp", composite="zplus_everywhere")(model, x, y)
    r_obj = explainers.lrp_map(model, x, y, composite=zplus_everywhere())
    np.testing.assert_allclose(r_name, r_obj, atol=1e-6)
    assert not np.allclose(r_name, explainers.get("lrp")(model, x, y), atol=1e-3)
    np.testing.assert_allclose(hybrid(model, x, y, composite="zplus_everywhere"),
                               hybrid(model, x, y, composite=zplus_everywhere()), atol=1e-6)
    args = cli.build_parser().parse_args(["explain", "a.png", "--method", "lrp",
                                          "--composite", "zplus_everywhere"])
    assert cli.make_plan(args).options == {"composite": "zplus_everywhere"}


@pytest.fixture
def mean_abs():
    """A metric registered in one place (one decorator), removed afterwards."""

    @metrics.metric("MeanAbs", category="Complexity", higher_is_better=False)
    def mean_abs(a, *, power=1.0):
        return jnp.mean(jnp.abs(helpers.flat(helpers.as_maps(a))) ** power, axis=-1)

    yield mean_abs
    metrics.unregister("MeanAbs")


def test_registered_metric_found_everywhere(setup, mean_abs, monkeypatch):
    model, x, y, masks = setup
    m = metrics.get("meanabs")
    assert (m.name, m.category, m.higher_is_better, m.needs) == ("MeanAbs", "Complexity", False,
                                                                 ())
    res = evaluation.evaluate(model, [(x, y, masks)], ["gradcam"], metrics=["MeanAbs"],
                              progress=False, chart=False)
    maps = np.asarray(jaxlrp.gradcam(model, x, y))
    np.testing.assert_allclose(res.scores["gradcam"]["MeanAbs"], np.abs(maps).mean((1, 2)),
                               rtol=1e-5)
    assert res.metrics[0].higher_is_better is False
    # bound options
    sq = m.with_options(power=2.0)(a=maps)
    np.testing.assert_allclose(sq, (maps ** 2).mean((1, 2)), rtol=1e-5)
    # the command line: listed in --metrics' help, and passed through by name
    parser = cli.build_parser()
    help_text = parser._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "MeanAbs" in help_text
    seen = {}

    def fake_evaluate(model, data, explainers, metrics, **kw):
        seen["metrics"] = [m.name for m in _resolve_metrics(metrics)]
        raise ExplanationError("stop here")

    monkeypatch.setattr(cli_evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(cli_evaluate, "load_model", lambda spec: types.SimpleNamespace(model=model))
    monkeypatch.setattr(cli_evaluate, "load_data", lambda spec, n, m: [(x, y, masks)])
    args = parser.parse_args(["evaluate", "--metrics", "MeanAbs,Sparseness", "--no-progress"])
    assert cli_evaluate.run_cli(args) == 2
    assert seen["metrics"] == ["MeanAbs", "Sparseness"]


def test_unknown_metric_lists_registered_ones(mean_abs):
    with pytest.raises(ExplanationError, match=r"metrics: unknown metric 'Nope'.*MeanAbs"):
        _resolve_metrics(["Nope"])
    metrics.unregister("MeanAbs")
    try:
        with pytest.raises(ExplanationError, match="unknown metric 'MeanAbs'"):
            _resolve_metrics(["MeanAbs"])
    finally:
        metrics.metric("MeanAbs", category="Complexity", higher_is_better=False)(mean_abs)


@pytest.mark.slow
def test_every_registered_metric_returns_per_example_scores(setup):
    """The contract: a uniform call gives (B,) scores for every registered metric."""
    model, x, y, masks = setup
    a = explainers.get("gradcam")(model, x, y)
    explain = explainers.get("gradcam")
    small = {"TopKIntersection": {"k": 20}, "PixelFlipping": {"features_in_step": 16},
             "Monotonicity": {"features_in_step": 16}, "AvgSensitivity": {"nr_samples": 2},
             "MaxSensitivity": {"nr_samples": 2}, "LocalLipschitzEstimate": {"nr_samples": 2},
             "FaithfulnessCorrelation": {"nr_runs": 3}}
    assert len(metrics.names()) >= 18
    for m in metrics.METRICS:
        s = m(model, x, y, a, explain=explain, masks=masks, key=jax.random.key(1),
              **small.get(m.name, {}))
        assert s.shape == (3,), (m.name, s.shape)
        assert np.isfinite(np.asarray(s, np.float64)).all(), m.name
        if m.needs_explainer:
            with pytest.raises(ExplanationError, match=f"explain: the metric {m.name} needs"):
                m(model, x, y, a, masks=masks, key=jax.random.key(1))
        if m.needs_masks:
            with pytest.raises(ExplanationError, match="masks"):
                m(model, x, y, a, explain=explain, key=jax.random.key(1))
    # the curve metrics' scores are the normalised AUC of their curves
    curves = metrics.pixel_flipping(model, x, y, a, features_in_step=16)
    np.testing.assert_allclose(
        metrics.get("PixelFlipping")(model, x, y, a, key=jax.random.key(1), features_in_step=16),
        np.trapezoid(np.asarray(curves), dx=1 / (curves.shape[1] - 1), axis=1), rtol=1e-5)


@pytest.mark.slow
def test_registered_explainer_found_everywhere(setup):
    model, x, y, masks = setup

    @explainers.register("saliency", title="Saliency")
    def saliency(model, x, target="predicted", *, power=1):  # |d logit_t / dx|^power
        def score(xx):
            return jnp.take_along_axis(model(xx), jnp.asarray(target)[:, None], axis=1).sum()

        return jnp.abs(jax.grad(score)(x)).sum(-1) ** power

    try:
        ref = np.asarray(saliency(model, jnp.asarray(x), y, power=2))
        assert explainers.get("Saliency", power=2) == explainers.get("saliency", power=2)
        np.testing.assert_allclose(explainers.get("saliency", power=2)(model, x, y), ref,
                                   rtol=1e-6)
        with pytest.raises(ExplanationError, match="powr: not an option"):
            explainers.get("saliency", powr=2)
        res = evaluation.evaluate(model, [(x, y, masks)], ["saliency"], metrics=["Sparseness"],
                                  progress=False, chart=False)
        np.testing.assert_allclose(res.scores["saliency"]["Sparseness"],
                                   np.asarray(metrics.sparseness(saliency(model, x, y))),
                                   rtol=1e-5)
        args = cli.build_parser().parse_args(["explain", "a.png", "--method", "saliency"])
        assert cli.make_plan(args).method == "saliency" and cli.panel_title("saliency") == (
            "Saliency")
    finally:
        explainers.EXPLAINERS.remove("saliency")
    assert "saliency" not in explainers.names()


def test_unregistered_metric_object_and_contract_errors(setup):
    model, x, y, masks = setup

    def peak(a, masks):  # 1 when a maximal pixel lies in the mask (the pointing game)
        v = helpers.flat(helpers.as_maps(a).sum(-1))
        m = helpers.prepare_masks(masks, (v.shape[0], *x.shape[1:3]))
        return (m & (v == v.max(-1, keepdims=True))).any(-1).astype(jnp.float32)

    m = metrics.make_metric(peak, "Peak", category="Localisation", higher_is_better=True)
    assert m.needs == ("masks",) and "Peak" not in metrics.names()
    res = evaluation.evaluate(model, [(x, y, masks)], ["gradcam"], metrics=[m],
                              progress=False, chart=False)
    np.testing.assert_allclose(
        res.scores["gradcam"]["Peak"],
        np.asarray(metrics.pointing_game(jaxlrp.gradcam(model, x, y), masks)))
    with pytest.raises(ExplanationError, match="needs: expected parameters"):
        metrics.make_metric(peak, "P", category="Localisation", higher_is_better=True,
                            needs=("explain",))
    with pytest.raises(ExplanationError, match="must take the maps 'a' or an explainer"):
        metrics.make_metric(lambda x, y: x, "P", category="Other", higher_is_better=True)
    curve = metrics.make_metric(lambda a: jnp.ones((a.shape[0], 4)), "Curve",
                                category="Other", higher_is_better=True)
    with pytest.raises(ExplanationError, match=r"per-example scores \(B,\).*summary="):
        curve(a=np.ones((2, 8, 8)))
    assert curve.__class__ is metrics.Metric
    summed = metrics.make_metric(lambda a: jnp.ones((a.shape[0], 4)), "Curve",
                                 category="Other", higher_is_better=True,
                                 summary=lambda c: c.sum(-1))
    np.testing.assert_allclose(summed(a=np.ones((2, 8, 8))), [4.0, 4.0])
