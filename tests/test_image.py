"""jaxlrp._image: blur against an independent float64 reference, normalisers, resize."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlrp import _image as image
from jaxlrp.errors import ExplanationError


def _reflect101(i: int, n: int) -> int:
    """OpenCV BORDER_REFLECT_101 index (gfedcb|abcdefgh|gfedcba), repeated as needed."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = i % period
    return i if i < n else period - i


def _blur_reference(m: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Direct 2-D (non-separable) Gaussian blur with reflect-101 borders, float64 loops."""
    r = k // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    kern = np.outer(g, g)
    h, w = m.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    acc += kern[di + r, dj + r] * m[_reflect101(i + di, h), _reflect101(j + dj, w)]
            out[i, j] = acc
    return out


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.sampled_from([1, 3, 5, 7]),
    sigma=st.floats(0.3, 6.0),
    seed=st.integers(0, 2**16),
)
def test_blur_matches_reflect101_reference(h, w, k, sigma, seed):
    m = np.random.default_rng(seed).standard_normal((h, w))
    with jax.enable_x64(True):
        out = np.asarray(image.gaussian_blur(jnp.asarray(m)[None], k, sigma))[0]
    np.testing.assert_allclose(out, _blur_reference(m, k, sigma), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_blur_default_kernel_and_batch_axes():
    g = image.gaussian_kernel(5, 4.0)
    assert g.shape == (5,) and abs(g.sum() - 1) < 1e-15 and np.allclose(g, g[::-1])
    assert g[2] > g[1] > g[0]
    # sigma <= 0: OpenCV's table for k <= 9, else the size-derived sigma
    # 0.3*((k-1)/2-1)+0.8 (= 2.0 for k=11)
    np.testing.assert_allclose(image.gaussian_kernel(5, 0), np.array([1, 4, 6, 4, 1]) / 16)
    np.testing.assert_allclose(image.gaussian_kernel(11, -1), image.gaussian_kernel(11, 2.0))
    x = jnp.asarray(np.random.default_rng(0).random((2, 3, 10, 11)), jnp.float32)
    out = image.gaussian_blur(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out[1, 2], image.gaussian_blur(x[1, 2]), atol=1e-6)
    np.testing.assert_allclose(jax.jit(image.gaussian_blur)(x), out, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(image.gaussian_blur)(x), out, atol=1e-6)
    # a constant map is unchanged; the blur preserves the mean only up to borders
    c = jnp.full((1, 6, 7), 2.5)
    np.testing.assert_allclose(image.gaussian_blur(c), c, rtol=1e-6)


def test_blur_bad_arguments():
    x = jnp.ones((4, 4))
    with pytest.raises(ExplanationError, match="ksize"):
        image.gaussian_blur(x, 4)
    with pytest.raises(ExplanationError, match="sigma"):
        image.gaussian_blur(x, 5, float("nan"))
    with pytest.raises(ExplanationError, match="maps"):
        image.gaussian_blur(jnp.ones(4))


def test_minmax_normalize():
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.standard_normal((3, 5, 6)), jnp.float32)
    m = m.at[1].set(7.0)  # constant map
    m = m.at[2].set(0.0)  # zero map
    out = image.minmax_normalize(m)
    assert not jnp.isnan(out).any()
    np.testing.assert_allclose(out[0].min(), 0.0, atol=0)
    np.testing.assert_allclose(out[0].max(), 1.0, atol=1e-7)
    expect = (m[0] - m[0].min()) / (m[0].max() - m[0].min())
    np.testing.assert_allclose(out[0], expect, rtol=1e-6)
    assert (out[1] == 0).all() and (out[2] == 0).all()
    # gradients stay finite on constant maps (double-where)
    g = jax.grad(lambda a: image.minmax_normalize(a).sum())(m)
    assert jnp.isfinite(g).all()
    assert (g[1] == 0).all()
    # invariance to positive affine maps
    np.testing.assert_allclose(image.minmax_normalize(3 * m + 2)[0], out[0], atol=1e-6)


def test_max_normalize():
    m = jnp.stack([
        jnp.arange(12.0).reshape(3, 4) - 3,  # max 8
        jnp.zeros((3, 4)),
        -jnp.ones((3, 4)),
    ])
    out = image.max_normalize(m)
    assert not jnp.isnan(out).any()
    np.testing.assert_allclose(out[0], m[0] / 8)
    assert (out[1] == 0).all()
    np.testing.assert_array_equal(out[2], m[2])  # max <= 0: unchanged, no sign flip
    g = jax.grad(lambda a: image.max_normalize(a).sum())(m)
    assert jnp.isfinite(g).all()


def test_resize_known_values():
    # cv2 INTER_LINEAR semantics: half-pixel centres, clamped borders
    out = image.resize(jnp.array([[[0.0, 1.0]]]), (1, 4))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.0])
    # downsampling by 2 averages pixel pairs (no antialiasing beyond that)
    out = image.resize(jnp.arange(8.0)[None, None], (1, 4))
    np.testing.assert_allclose(out[0, 0], [0.5, 2.5, 4.5, 6.5])
    # align_corners: endpoints map onto endpoints, linear ramps are reproduced exactly
    out = image.resize(jnp.array([[[0.0, 1.0, 2.0]]]), (1, 5), align_corners=True)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0, 1.5, 2.0])


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 20), ow=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_resize_properties(h, w, oh, ow, seed):
    m = np.random.default_rng(seed).standard_normal((2, h, w))
    with jax.enable_x64(True):
        out = np.asarray(image.resize(jnp.asarray(m), (oh, ow)))
        # independent reference: jax.image.resize without antialiasing (triangle kernel,
        # half-pixel centres, edge weights renormalised == clamping)
        ref = np.asarray(jax.image.resize(jnp.asarray(m), (2, oh, ow), "linear", antialias=False))
        const = np.asarray(image.resize(jnp.full((1, h, w), 3.0), (oh, ow), align_corners=True))
    assert out.shape == (2, oh, ow)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    # convex combinations: stays within [min, max] of each map; constants stay constant
    assert (out.min(axis=(1, 2)) >= m.min(axis=(1, 2)) - 1e-12).all()
    assert (out.max(axis=(1, 2)) <= m.max(axis=(1, 2)) + 1e-12).all()
    np.testing.assert_allclose(const, 3.0, rtol=1e-14)


def test_resize_identity_and_errors():
    m = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5)), jnp.float32)
    assert image.resize(m, (5, 5)) is m
    with pytest.raises(ExplanationError, match="size"):
        image.resize(m, (0, 3))
    with pytest.raises(ExplanationError, match="maps"):
        image.resize(jnp.ones(3), (2, 2))
    np.testing.assert_allclose(jax.jit(lambda a: image.resize(a, (9, 7)))(m),
                               image.resize(m, (9, 7)), atol=1e-6)
