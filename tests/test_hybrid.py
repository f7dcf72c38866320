"""The hybrid explainer: pipeline steps, transformations, gradients and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp._hybrid import combine, combine_parts, denoise, hybrid, reduce_channels
from jaxlrp.errors import ExplanationError
from jaxlrp.models import VGG


@pytest.fixture(scope="module")
def model():
    return VGG(num_classes=5, widths=(6, 8), dense=(12,), input_size=16, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
    return jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))


@pytest.mark.slow
def test_steps_follow_the_paper_pipeline_in_numpy(model, x):
    parts = hybrid(model, x, 1, return_parts=True)
    cam = np.asarray(jaxlrp.gradcam_pp(model, x, 1))
    np.testing.assert_allclose(parts.cam, cam, atol=1e-6)
    rel = np.asarray(jaxlrp.lrp(model, x, 1, "paper")).mean(-1)
    # independent numpy re-computation of steps 2-4
    den = np.clip(cam - 0.2, 0, 1)
    rel = rel / rel.max(axis=(1, 2), keepdims=True)
    prod = den * rel
    prod = prod / np.where(prod.max(axis=(1, 2), keepdims=True) > 0,
                           prod.max(axis=(1, 2), keepdims=True), 1)
    np.testing.assert_allclose(parts.denoised, den, atol=1e-6)
    np.testing.assert_allclose(parts.relevance_map, rel, atol=1e-5)
    np.testing.assert_allclose(parts.product, prod, atol=1e-5)
    h = np.asarray(parts.hybrid)
    assert h.min() >= 0 and h.max() <= 1
    assert np.allclose(h.max(axis=(1, 2)), 1.0) or np.any(h.max(axis=(1, 2)) == 0)


@pytest.mark.slow
def test_batched_equals_per_example_and_jit_equals_eager(model, x):
    t = jnp.array([0, 4, 2, 2])
    batched = hybrid(model, x, t)
    per = jnp.concatenate([hybrid(model, x[i:i + 1], t[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(batched, per, atol=1e-5)
    jitted = jax.jit(lambda m, x, t: hybrid(m, x, t))(model, x, t)
    np.testing.assert_allclose(jitted, batched, atol=1e-5)
    vmapped = jax.vmap(lambda xi, ti: hybrid(model, xi[None], ti[None])[0])(x, t)
    np.testing.assert_allclose(vmapped, batched, atol=1e-5)


def _np_pipeline(cam, rel, threshold=0.2, reduce="mean", ksize=5, sigma=4.0):
    """Steps 2-5 in numpy/scipy, written from the paper's description (independent of
    jaxlrp._image): scipy's 'mirror' border is OpenCV's reflect-101."""
    from scipy.ndimage import correlate1d

    def maxnorm(m):
        hi = m.max(axis=(1, 2), keepdims=True)
        return np.where(hi > 0, m / np.where(hi > 0, hi, 1), m)

    rel = np.asarray(rel, np.float64)
    r = {"mean": rel.mean(-1), "sum": rel.sum(-1), "abs_mean": np.abs(rel).mean(-1),
         "max_abs": np.abs(rel).max(-1)}[reduce]
    prod = maxnorm(np.clip(np.asarray(cam, np.float64) - threshold, 0, 1) * maxnorm(r))
    i = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(i**2) / (2 * sigma**2))
    g /= g.sum()
    blurred = correlate1d(correlate1d(prod, g, axis=1, mode="mirror"), g, axis=2, mode="mirror")
    return np.clip(maxnorm(blurred), 0, 1)


@pytest.mark.parametrize("kwargs", [
    {}, {"cam": "gradcam"}, {"threshold": 0.5}, {"ksize": 3}, {"sigma": 1.0},
    {"composite": "epsilon_alpha2_beta1"}, {"reduce": "sum"}, {"reduce": "abs_mean"},
    {"reduce": "max_abs"},
])
def test_every_option_matches_an_independent_recomputation(model, x, kwargs):
    opts = {"cam": "gradcam++", "composite": "paper", **kwargs}
    cam_fn = jaxlrp.gradcam if opts.pop("cam") == "gradcam" else jaxlrp.gradcam_pp
    comp = opts.pop("composite")
    want = _np_pipeline(np.asarray(cam_fn(model, x, 1)),
                        np.asarray(jaxlrp.lrp(model, x, 1, comp)), **opts)
    out = np.asarray(hybrid(model, x, 1, **kwargs))
    assert out.shape == (4, 16, 16)
    np.testing.assert_allclose(out, want, atol=2e-5)
    base = np.asarray(hybrid(model, x, 1))
    if kwargs and kwargs != {"reduce": "sum"}:  # sum = mean up to the max-normalisation
        assert np.abs(out - base).max() > 1e-3, kwargs  # the option is not ignored




@pytest.mark.slow
def test_combine_is_safe_on_zero_maps_and_vmaps():
    cam = jnp.zeros((2, 8, 8))
    rel = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    out = combine(cam, rel)
    assert np.all(np.asarray(out) == 0)
    out = combine(jnp.ones((2, 8, 8)), jnp.zeros((2, 8, 8, 3)))
    assert np.all(np.asarray(out) == 0)
    cam = jax.random.uniform(jax.random.key(1), (3, 8, 8))
    rel = jax.random.normal(jax.random.key(2), (3, 8, 8, 3))
    batched = jax.jit(combine)(cam, rel)
    single = jax.vmap(lambda c, r: combine(c[None], r[None])[0])(cam, rel)
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_steps():
    np.testing.assert_allclose(denoise(jnp.array([[[0.1, 0.5, 1.0]]])), [[[0.0, 0.3, 0.8]]],
                               atol=1e-7)
    r = jnp.arange(12.0).reshape(1, 2, 2, 3) - 5
    np.testing.assert_allclose(reduce_channels(r), np.asarray(r).mean(-1))
    np.testing.assert_allclose(reduce_channels(r, "max_abs"), np.abs(np.asarray(r)).max(-1))
    parts = combine_parts(jnp.ones((1, 2, 2)), r)
    assert parts.hybrid.shape == (1, 2, 2)


@pytest.mark.parametrize("c", [1, 3, 16, 17])
@pytest.mark.parametrize("how", ["mean", "sum", "abs_mean", "max_abs"])
def test_reduce_channels_matches_float64_and_its_gradient(c, how):
    r = jax.random.normal(jax.random.key(c), (2, 5, 4, c))
    r64 = np.asarray(r, np.float64)
    ref = {"mean": r64.mean(-1), "sum": r64.sum(-1), "abs_mean": np.abs(r64).mean(-1),
           "max_abs": np.abs(r64).max(-1)}[how]
    np.testing.assert_allclose(reduce_channels(r, how), ref, rtol=1e-6, atol=1e-6)
    plain = {"mean": lambda a: a.mean(-1), "sum": lambda a: a.sum(-1),
             "abs_mean": lambda a: jnp.abs(a).mean(-1),
             "max_abs": lambda a: jnp.abs(a).max(-1)}[how]
    w = jax.random.normal(jax.random.key(9), (2, 5, 4))
    g = jax.grad(lambda a: (reduce_channels(a, how) * w).sum())(r)
    np.testing.assert_allclose(g, jax.grad(lambda a: (plain(a) * w).sum())(r), atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a property of XLA:CPU's fusion")
def test_hybrid_keeps_the_first_blocks_transposed_convolutions_apart(monkeypatch):
    """XLA:CPU fused a ``reduce`` over the input relevance's channels with both transposed
    convolutions of the first block into one YNNPACK fusion, 4x slower (VGG16, batch 32);
    the hybrid reduces channels with a chain of slices so that no fusion holds two."""
    import re

    net = VGG(num_classes=3, widths=(64,), convs_per_block=2, dense=(8,), input_size=64,
              rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)

    def convs_per_fusion(fn):
        txt = jax.jit(fn).lower(x, t).compile().as_text()
        return max(c.count("convolution(") for c in re.split(r"\n(?=%|ENTRY)", txt)
                   if not c.startswith("ENTRY"))

    assert convs_per_fusion(lambda xx, tt: hybrid(net, xx, tt)) == 1
    # with jnp's reduce in its place the two are fused (what this test guards against)
    import jaxlrp._hybrid as H

    monkeypatch.setattr(H, "reduce_channels", lambda r, how="mean": r.mean(-1))
    jaxlrp.clear_caches()
    assert convs_per_fusion(lambda xx, tt: hybrid(net, xx, tt)) >= 2


class SoftCNN(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.d = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.softplus(self.c2(jax.nn.softplus(self.c1(x))))
        return self.d(h.mean(axis=(1, 2)))


@pytest.mark.slow
def test_gradient_through_hybrid_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        m = SoftCNN(nnx.Rngs(0))
        graphdef, state = nnx.split(m)
        m = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), state))
        x = jax.random.uniform(jax.random.key(0), (1, 6, 6, 3), jnp.float64, 0.1, 1.0)

        def f(x, m=m):
            return jnp.sum(hybrid(m, x, 1, cam="gradcam", threshold=0.0,
                                  composite="epsilon") ** 2)

        g = jax.grad(f)(x)
        assert np.all(np.isfinite(g))
        rng = np.random.default_rng(0)
        for _ in range(3):
            d = jnp.asarray(rng.normal(size=x.shape))
            h = 1e-6
            fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
            np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=1e-4, atol=1e-7)
        gm = jax.grad(lambda mm: f(x, mm))(m)
        leaves = jax.tree_util.tree_leaves(gm)
        assert all(np.all(np.isfinite(v)) for v in leaves)
        assert any(np.any(np.asarray(v) != 0) for v in leaves)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_bad_input(model, x):
    for kwargs, msg in [({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"),
                        ({"ksize": 4}, "odd"), ({"ksize": 0}, "positive"),
                        ({"sigma": 0.0}, "sigma"), ({"sigma": -1}, "sigma"),
                        ({"cam": "gradcam+++"}, "cam"), ({"reduce": "median"}, "reduce"),
                        ({"layer": "features/9"}, "layer")]:
        with pytest.raises(ExplanationError, match=msg):
            hybrid(model, x, 1, **kwargs)
    with pytest.raises(ExplanationError, match="out of range"):
        hybrid(model, x, 5)
    with pytest.raises(ExplanationError, match="NaN"):
        hybrid(model, x.at[0, 0, 0, 0].set(jnp.inf), 1)
    with pytest.raises(ExplanationError, match="expects images|channels|cannot be applied"):
        hybrid(model, x[..., :2], 1)


def test_constant_input_gives_finite_maps(model):
    out = hybrid(model, jnp.full((2, 16, 16, 3), 0.5), 1)
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
