"""Numerics: no NaN or Inf from any explainer or metric, on random and degenerate inputs.

Hypothesis draws the model (tiny VGG, VGG with BatchNorm, ResNet, a softplus VGG, a
bias-free VGG whose activations vanish on a zero input), the image content (random,
constant, all-zero), its scale (1e-30 ... 1e30) and dtype (float32, bfloat16,
float16) and the targets. Properties:

* every explainer returns finite maps; CAMs and the hybrid lie in [0, 1];
* an input that is not finite in its dtype (1e30 in float16) raises ExplanationError;
* metrics return finite scores on finite maps, including constant and all-zero maps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import jaxlrp
from jaxlrp import explainers, metrics
from jaxlrp.errors import ExplanationError
from jaxlrp.models import VGG, ResNet, soften

S = 16  # image side (FaithfulnessCorrelation's default subset of 224 needs H*W > 224)
K = 3
B = 2


def few(n: int) -> settings:
    """Few examples (each new model/dtype compiles), reproducible, no deadline."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SCALES = (1e-30, 1e-6, 1.0, 1e6, 1e30)
CONTENTS = ("random", "constant", "zeros", "signed")


def _zero_biases(model: nnx.Module) -> nnx.Module:
    for _, node in nnx.iter_graph(model):
        bias = getattr(node, "bias", None)
        if isinstance(bias, nnx.Param) and bias.value is not None:
            bias.value = jnp.zeros_like(bias.value)
    return model


@functools.cache
def model(name: str):
    if name == "vgg":
        return VGG(num_classes=K, widths=(4,), dense=(8,), input_size=S, rngs=nnx.Rngs(0))
    if name == "vgg_bn":
        return VGG(num_classes=K, widths=(4, 4), dense=(), batch_norm=True, input_size=S,
                   rngs=nnx.Rngs(1))
    if name == "resnet":
        return ResNet(num_classes=K, widths=(4,), rngs=nnx.Rngs(2))
    if name == "softplus":
        return soften(model("vgg"), beta=10.0)
    if name == "bias_free":
        return _zero_biases(VGG(num_classes=K, widths=(4,), dense=(8,), input_size=S,
                                rngs=nnx.Rngs(3)))
    raise KeyError(name)


MODELS = ("vgg", "vgg_bn", "resnet", "softplus", "bias_free")


def make_images(content: str, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if content == "random":
        x = rng.uniform(0, 1, (B, S, S, 3))
    elif content == "signed":
        x = rng.normal(0, 1, (B, S, S, 3))
    elif content == "constant":
        x = np.full((B, S, S, 3), 0.5)
    else:
        x = np.zeros((B, S, S, 3))
    return (x * scale).astype(np.float64)


inputs = st.fixed_dictionaries({
    "model": st.sampled_from(MODELS),
    "content": st.sampled_from(CONTENTS),
    "scale": st.sampled_from(SCALES),
    "dtype": st.sampled_from(tuple(DTYPES)),
    "seed": st.integers(0, 2**16),
    "target": st.one_of(st.just("predicted"), st.integers(0, K - 1),
                        st.lists(st.integers(0, K - 1), min_size=B, max_size=B)),
})


def _target(t):
    return np.asarray(t, np.int32) if isinstance(t, list) else t


def _cast(x: np.ndarray, dtype: str) -> jax.Array:
    return jnp.asarray(x, jnp.float32).astype(DTYPES[dtype])


def _check_map(m: jax.Array, name: str, lo: float, hi: float) -> None:
    m = np.asarray(m, np.float32)
    assert m.shape[:3] == (B, S, S), (name, m.shape)
    assert np.isfinite(m).all(), f"{name}: non-finite values"
    assert m.min() >= lo - 1e-6 and m.max() <= hi + 1e-6, (name, m.min(), m.max())


RANGES = {"lrp": (-1.0, 1.0)}  # the registry's LRP map is R / max|R|; the rest are in [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("name", explainers.NAMES)
@few(5)
@given(case=inputs)
def test_explainers_finite_and_normalised(name, case):
    x = _cast(make_images(case["content"], case["scale"], case["seed"]), case["dtype"])
    explain = explainers.get(name)
    m = model(case["model"])
    if not bool(jnp.isfinite(x).all()):  # e.g. 1e30 in float16 is inf
        with pytest.raises(ExplanationError, match="x:"):
            explain(m, x, _target(case["target"]))
        return
    out = explain(m, x, _target(case["target"]))
    _check_map(out, name, *RANGES.get(name, (0.0, 1.0)))


COMPOSITES = ("paper", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon",
              "gamma_box")


@pytest.mark.parametrize("composite", COMPOSITES)
@few(3)
@given(case=inputs)
def test_lrp_composites_finite(composite, case):
    x = _cast(make_images(case["content"], case["scale"], case["seed"]), case["dtype"])
    assume(bool(jnp.isfinite(x).all()))  # non-finite x: test_explainers_finite_and_normalised
    comp = (jaxlrp.composites.epsilon_gamma_box(float(x.min()), float(x.max()))
            if composite == "gamma_box" else composite)
    r = jaxlrp.lrp(model(case["model"]), x, _target(case["target"]), composite=comp)
    assert r.shape == x.shape
    assert bool(jnp.isfinite(r).all()), composite


@pytest.mark.slow
@few(4)
@given(case=inputs, threshold=st.floats(0.0, 1.0), ksize=st.sampled_from((1, 3, 5, 7)),
       sigma=st.floats(1e-3, 50.0), reduce=st.sampled_from(("mean", "sum", "abs_mean",
                                                            "max_abs")))
def test_hybrid_options_finite_in_unit_interval(case, threshold, ksize, sigma, reduce):
    x = _cast(make_images(case["content"], case["scale"], case["seed"]), case["dtype"])
    assume(bool(jnp.isfinite(x).all()))
    parts = jaxlrp.hybrid(model(case["model"]), x, _target(case["target"]),
                          threshold=threshold, ksize=ksize, sigma=sigma, reduce=reduce,
                          return_parts=True)
    for field in ("cam", "denoised", "hybrid"):
        _check_map(getattr(parts, field), field, 0.0, 1.0)
    # signed intermediates, divided by their positive max: finite, at most 1 (the minimum
    # is unbounded when negative evidence outweighs the positive; the end clips it)
    for field in ("relevance_map", "product"):
        _check_map(getattr(parts, field), field, -np.inf, 1.0)


maps = st.fixed_dictionaries({
    "content": st.sampled_from(CONTENTS + ("onehot",)),
    "scale": st.sampled_from(SCALES),
    "dtype": st.sampled_from(tuple(DTYPES)),
    "channels": st.sampled_from((0, 3)),
    "seed": st.integers(0, 2**16),
})


def make_maps(spec) -> jax.Array:
    if spec["content"] == "onehot":
        a = np.zeros((B, S, S, 3))
        a[:, 3, 5, :] = 1.0
    else:
        a = make_images(spec["content"], 1.0, spec["seed"])
    a = a * spec["scale"]
    if spec["channels"] == 0:
        a = a.mean(-1)
    a = _cast(a, spec["dtype"])
    return jnp.where(jnp.isfinite(a), a, 0.0).astype(a.dtype)  # maps themselves finite


MASKS = np.zeros((B, S, S), bool)
MASKS[0, 2:9, 3:12] = True
MASKS[1, 8:, :5] = True


@pytest.mark.slow
@few(10)
@given(spec=maps)
def test_map_metrics_finite(spec):
    a = make_maps(spec)
    nonneg = jnp.abs(a)
    scores = {
        "sparseness": metrics.sparseness(a),
        "complexity": metrics.complexity(a),
        "effective_complexity": metrics.effective_complexity(a),
        "pointing_game": metrics.pointing_game(a, MASKS),
        "attribution_localisation": metrics.attribution_localisation(nonneg, MASKS),
        "relevance_mass_accuracy": metrics.relevance_mass_accuracy(a, MASKS),
        "relevance_rank_accuracy": metrics.relevance_rank_accuracy(a, MASKS),
        "top_k_intersection": metrics.top_k_intersection(a, MASKS, k=20),
        "auc": metrics.auc(a, MASKS),
    }
    for name, s in scores.items():
        assert s.shape == (B,), name
        assert bool(jnp.isfinite(s).all()), (name, s)


@functools.cache
def _gradcam():
    return explainers.get("gradcam")


@pytest.mark.slow
@few(3)
@given(case=inputs, spec=maps)
def test_default_suite_finite(case, spec):
    """The paper's five metrics on degenerate images and maps give finite scores.

    One model (each metric compiles per model and dtype); the explainer's maps are 2-D,
    so the maps scored are too.
    """
    x = _cast(make_images(case["content"], case["scale"], case["seed"]), case["dtype"])
    assume(bool(jnp.isfinite(x).all()))
    m = model("vgg")
    y = np.array([0, K - 1], np.int32)
    a = make_maps({**spec, "channels": 0})
    for metric in metrics.default_suite():
        s = metric.fn(m, x, y, a, explain=_gradcam(), masks=MASKS, key=jax.random.key(0))
        assert s.shape == (B,), metric.name
        assert bool(jnp.isfinite(s).all()), (metric.name, s)
