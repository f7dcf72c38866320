"""eMPRT and sMPRT (Hedström et al. 2024) and the ``draw`` hook of the MPRT family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import entropy, spearmanr

from jaxlrp._tracing import as_adapter
from jaxlrp.errors import ExplanationError
from jaxlrp.metrics import efficient_mprt, model_parameter_randomisation, smooth_mprt
from jaxlrp.metrics._randomisation import histogram_entropy

B, H, W, C, K = 3, 8, 8, 3, 4


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(C, 4, (3, 3), rngs=rngs)
        self.d = nnx.Linear(4 * H * W, K, rngs=rngs)

    def __call__(self, x):
        return self.d(nnx.relu(self.c1(x)).reshape(x.shape[0], -1))


def grad_x_input(model, x, target):
    ad = as_adapter(model)

    def out(xx):
        return jnp.take_along_axis(ad.apply(ad.params, xx), target[:, None], 1).sum()

    return (jax.grad(out)(x) * x).sum(-1)


@pytest.fixture(scope="module")
def setup():
    model = Tiny(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).random((B, H, W, C)), jnp.float32)
    y = jnp.asarray([0, 1, 3])
    rng = np.random.default_rng(1)
    weights = {("c1", "kernel"): rng.standard_normal((3, 3, C, 4)),
               ("c1", "bias"): rng.standard_normal(4),
               ("d", "kernel"): rng.standard_normal((4 * H * W, K)),
               ("d", "bias"): rng.standard_normal(K)}
    return model, x, y, weights, lambda layer, name, v, k: weights[(layer, name)]


def _replaced(model, weights, layers):
    m = nnx.clone(model)
    for layer in layers:
        mod = getattr(m, layer)
        mod.kernel.value = jnp.asarray(weights[(layer, "kernel")], jnp.float32)
        mod.bias.value = jnp.asarray(weights[(layer, "bias")], jnp.float32)
    return m


@pytest.mark.slow
def test_histogram_entropy_matches_numpy_histogram():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 6, 7))
    a[1] = np.round(a[1], 1)  # values on bin edges
    a[2] = -1.5  # constant: one bin, entropy 0
    for n in (1, 5, 100):
        ref = [entropy(np.histogram(a[i], bins=n)[0]) for i in range(4)]
        np.testing.assert_allclose(histogram_entropy(jnp.asarray(a), n), ref, atol=1e-6)


def test_efficient_mprt_is_the_relative_entropy_rise(setup):
    model, x, y, weights, draw = setup
    got = np.asarray(efficient_mprt(model, x, y, grad_x_input, jax.random.key(0), draw=draw))
    a0 = np.asarray(grad_x_input(model, x, y))
    a1 = np.asarray(grad_x_input(_replaced(model, weights, ["c1", "d"]), x, y))
    h0 = np.array([entropy(np.histogram(a0[i], bins=100)[0]) for i in range(B)])
    h1 = np.array([entropy(np.histogram(a1[i], bins=100)[0]) for i in range(B)])
    assert got.shape == (B,)
    np.testing.assert_allclose(got, (h1 - h0) / h0, rtol=1e-4, atol=1e-5)
    # scale-free: the explanation x 7 gives the same score
    scaled = efficient_mprt(model, x, y, lambda m, xx, t: 7 * grad_x_input(m, xx, t),
                            jax.random.key(0), draw=draw)
    np.testing.assert_allclose(scaled, got, atol=1e-6)


@pytest.mark.slow
def test_smooth_mprt_one_sample_is_mprt_and_noise_is_replayed(setup):
    model, x, y, weights, draw = setup
    k = jax.random.key(0)
    mprt = model_parameter_randomisation(model, x, y, grad_x_input, k, draw=draw)  # top-down
    s1 = smooth_mprt(model, x, y, grad_x_input, k, nr_samples=1, layer_order="top_down",
                     draw=draw)
    np.testing.assert_allclose(s1, mprt, atol=1e-6)
    # bottom-up with explicit noise, recomputed by hand: column 0 randomises c1 only
    s, mag = 3, 0.2
    z = np.random.default_rng(2).standard_normal((3, s - 1, B, H, W, C))
    got = np.asarray(smooth_mprt(model, x, y, grad_x_input, k, nr_samples=s,
                                 noise_magnitude=mag, noise=z, draw=draw))
    xs = np.asarray(x)
    std = mag * (xs.max(axis=(1, 2, 3)) - xs.min(axis=(1, 2, 3)))[:, None, None, None]

    def smoothed(m, zz):
        acc = np.asarray(grad_x_input(m, x, y))
        for n in range(s - 1):
            acc = acc + np.asarray(grad_x_input(m, jnp.asarray(xs + zz[n] * std), y))
        return np.abs(acc / s)

    a0 = smoothed(model, z[0])
    for col, layers in enumerate((["c1"], ["c1", "d"])):
        ar = smoothed(_replaced(model, weights, layers), z[col + 1])
        ref = [spearmanr(a0[i].ravel(), ar[i].ravel())[0] for i in range(B)]
        np.testing.assert_allclose(got[:, col], ref, atol=1e-5)
    # a fresh key draws different noise: different scores
    other = smooth_mprt(model, x, y, grad_x_input, jax.random.key(1), nr_samples=s,
                        noise_magnitude=mag, draw=draw)
    assert np.abs(np.asarray(other) - got).max() > 1e-3


def test_bad_arguments(setup):
    model, x, y, _, draw = setup
    k = jax.random.key(0)
    for kwargs, msg in [({"nr_samples": 0}, "nr_samples"), ({"noise_magnitude": -1},
                        "noise_magnitude"), ({"layer_order": "sideways"}, "layer_order"),
                        ({"noise": np.zeros((2, 1, B, H, W, C))}, "noise")]:
        with pytest.raises(ExplanationError, match=msg):
            smooth_mprt(model, x, y, grad_x_input, k, nr_samples=kwargs.pop("nr_samples", 2),
                        **kwargs)
    with pytest.raises(ExplanationError, match="n_bins"):
        efficient_mprt(model, x, y, grad_x_input, k, n_bins=0)
    with pytest.raises(ExplanationError, match="draw"):
        efficient_mprt(model, x, y, grad_x_input, k,
                       draw=lambda layer, name, v, kk: jnp.zeros((1,)))
