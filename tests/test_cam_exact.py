"""Grad-CAM++ with the paper's general formula (eq. 10): exact diagonal derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp import cam
from jaxlrp._cam_exact import diagonal_derivatives
from jaxlrp.errors import ExplanationError

K = 4


class Net(nnx.Module):
    """conv-relu, conv (the CAM layer 'c2'), smooth or ReLU tail, dense."""

    def __init__(self, smooth: bool, rngs: nnx.Rngs):
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs)
        self.c1 = nnx.Conv(3, 4, (3, 3), **kw)
        self.c2 = nnx.Conv(4, 3, (3, 3), **kw)
        self.d = nnx.Linear(3 * 4, K, **kw)
        self.smooth = smooth

    def tail(self, a):
        """The network after the CAM layer, written out: A (B, 4, 4, 3) -> logits."""
        h = jax.nn.softplus(a) if self.smooth else nnx.relu(a)
        h = nnx.max_pool(h, (2, 2), (2, 2)) if not self.smooth else nnx.avg_pool(h, (2, 2),
                                                                                  (2, 2))
        return self.d(h.reshape(h.shape[0], -1))

    def __call__(self, x):
        return self.tail(self.c2(nnx.relu(self.c1(x))))


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _data(smooth, seed=0):
    model = Net(smooth, nnx.Rngs(seed))
    x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (2, 4, 4, 3)))
    return model, x, jnp.array([1, 3])


RAW = dict(relu=False, normalize=False, upsample=False)


@pytest.mark.slow
def test_exponential_score_on_a_piecewise_linear_tail_is_the_closed_form():
    model, x, t = _data(smooth=False)
    exact = np.asarray(cam.gradcam_pp(model, x, t, "c2", exact=True, **RAW))
    closed = np.asarray(cam.gradcam_pp(model, x, t, "c2", eps=0.0, **RAW))
    s = np.asarray(model(x))[np.arange(2), np.asarray(t)]
    assert np.abs(closed).max() > 1e-3
    # d^n exp(S) / dA^n = exp(S) g^n: alpha is the closed form's, the weights gain exp(S)
    np.testing.assert_allclose(exact, np.exp(s)[:, None, None] * closed, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(cam.gradcam_pp(model, x, t, "c2", exact=True),
                               cam.gradcam_pp(model, x, t, "c2", eps=0.0), atol=1e-9)
    # the raw logit of a piecewise-linear tail has no curvature: alpha = 0, map = 0
    zero = cam.gradcam_pp(model, x, t, "c2", exact=True, score="logit", **RAW)
    assert np.all(np.asarray(zero) == 0)


def _fd_reference(model, x, t, score):
    """eq. 10 from float64 central finite differences of the autodiff gradient g of an
    explicit Y(A) = score(tail(A)): d2 = (g(A+he) - g(A-he)) / 2h, d3 = (g(A+he) - 2 g(A)
    + g(A-he)) / h^2, Richardson-extrapolated from h = 1e-3 and 5e-4."""
    a = model.c2(nnx.relu(model.c1(x)))

    def y(aa):
        return score(model.tail(aa), t)

    g = jax.grad(lambda aa: y(aa).sum())
    n = int(np.prod(a.shape[1:]))
    h = 1e-3

    def at(k, hh):
        e = jnp.broadcast_to(jax.nn.one_hot(k, n, dtype=a.dtype).reshape(a.shape[1:]), a.shape)
        gp, gm = g(a + hh * e), g(a - hh * e)
        return (gp * e).sum((1, 2, 3)), (gm * e).sum((1, 2, 3))

    def diffs(hh):
        gp, gm = jax.vmap(lambda k: at(k, hh))(jnp.arange(n))
        gp = np.moveaxis(np.asarray(gp), 0, 1).reshape(a.shape)
        gm = np.moveaxis(np.asarray(gm), 0, 1).reshape(a.shape)
        return (gp - gm) / (2 * hh), (gp - 2 * d1 + gm) / hh**2

    d1 = np.asarray(g(a))
    (d2h, d3h), (d2q, d3q) = diffs(h), diffs(h / 2)
    # Richardson extrapolation: the O(h^2) truncation errors cancel, leaving O(h^4)
    d2, d3 = (4 * d2q - d2h) / 3, (4 * d3q - d3h) / 3
    a = np.asarray(a)
    denom = 2 * d2 + a.sum(axis=(1, 2), keepdims=True) * d3
    alpha = np.where(denom != 0, d2 / np.where(denom != 0, denom, 1), 0)
    w = (alpha * np.maximum(d1, 0)).sum(axis=(1, 2))
    return np.einsum("bhwc,bc->bhw", a, w), d2, d3


@pytest.mark.slow
@pytest.mark.parametrize("score", ["probability", "exp_logit"])
def test_general_output_matches_float64_finite_differences(score):
    model, x, t = _data(smooth=True, seed=1)
    fn = {"probability": lambda lg, tt: jax.nn.softmax(lg)[jnp.arange(2), tt],
          "exp_logit": lambda lg, tt: jnp.exp(lg[jnp.arange(2), tt])}[score]
    ref, d2_ref, d3_ref = _fd_reference(model, x, t, fn)
    from jaxlrp._tracing import as_adapter

    ad = as_adapter(model)
    _, _, d2, d3, _ = diagonal_derivatives(ad, ad.params, x, t, "c2", score, 16)
    np.testing.assert_allclose(d2, d2_ref, rtol=1e-6, atol=1e-9 * np.abs(d2_ref).max())
    np.testing.assert_allclose(d3, d3_ref, rtol=1e-5, atol=1e-7 * np.abs(d3_ref).max())
    got = np.asarray(cam.gradcam_pp(model, x, t, "c2", exact=True, score=score,
                                    chunk_size=16, **RAW))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    # a callable score is the same as its name
    np.testing.assert_allclose(
        cam.gradcam_pp(model, x, t, "c2", exact=True, score=fn, **RAW), got, rtol=1e-12)
    # on a smooth tail the general formula differs from the exponential closed form
    closed = np.asarray(cam.gradcam_pp(model, x, t, "c2", eps=0.0))
    exact_n = np.asarray(cam.gradcam_pp(model, x, t, "c2", exact=True, score=score))
    assert np.abs(closed - exact_n).max() > 1e-3


@pytest.mark.slow
def test_exact_is_batched_jittable_and_checks_arguments():
    model, x, t = _data(smooth=True, seed=2)
    both = np.asarray(cam.gradcam_pp(model, x, t, "c2", exact=True, score="probability"))
    one = np.asarray(cam.gradcam_pp(model, x[1:], t[1:], "c2", exact=True,
                                    score="probability"))
    np.testing.assert_allclose(both[1:], one, atol=1e-10)
    jitted = jax.jit(lambda m, xx: cam.gradcam_pp(m, xx, t, "c2", exact=True,
                                                  score="probability"))(model, x)
    np.testing.assert_allclose(jitted, both, atol=1e-10)
    with pytest.raises(ExplanationError, match="score"):
        cam.gradcam_pp(model, x, t, "c2", score="probability")
    with pytest.raises(ExplanationError, match="score"):
        cam.gradcam_pp(model, x, t, "c2", exact=True, score="softmax")
    with pytest.raises(ExplanationError, match="chunk_size"):
        cam.gradcam_pp(model, x, t, "c2", exact=True, chunk_size=0)
