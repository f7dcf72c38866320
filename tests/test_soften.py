"""soften: ReLU -> softplus(beta x)/beta twins of NNX and Linen models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp.cam import gradcam
from jaxlrp.errors import ExplanationError
from jaxlrp.lrp import lrp
from jaxlrp.models import VGG, ResNet
from jaxlrp.models.softening import soft_relu, soften, softened_beta
from jaxlrp.models.vgg import nnx_to_linen
from jaxlrp.tracing import layers


@pytest.fixture(scope="module")
def small():
    model = VGG(widths=(4, 8), dense=(8,), input_size=16, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    return model, x


def test_soft_relu_closed_form():
    x = jnp.linspace(-3, 3, 13)
    np.testing.assert_allclose(soft_relu(x, 2.0), np.log1p(np.exp(2.0 * np.asarray(x))) / 2.0,
                               rtol=1e-6)


def test_converges_to_original_as_beta_grows(small):
    model, x = small
    ref = model(x)
    gaps = [float(jnp.max(jnp.abs(soften(model, b)(x) - ref))) for b in (1.0, 10.0, 100.0, 1e4)]
    assert gaps[0] > 1e-2  # it really is a different function for small beta
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-3


def test_original_untouched_and_relu_restored(small):
    model, x = small
    before = model(x)
    soft = soften(model, 1.0)
    soft(x)
    assert jax.nn.relu is nnx.relu and not hasattr(jax.nn.relu, "func")
    np.testing.assert_array_equal(model(x), before)
    assert softened_beta(soft) == 1.0 and softened_beta(model) is None
    assert softened_beta(soften(soft, 3.0)) == 3.0
    assert isinstance(soft, VGG)
    # same paths as the original (composites and layer names carry over)
    assert [i.path for i in layers(soft, x)] == [i.path for i in layers(model, x)]


@pytest.mark.slow
def test_jit_and_second_derivative(small):
    model, x = small
    soft = soften(model, 5.0)
    np.testing.assert_allclose(jax.jit(lambda m, xx: m(xx))(soft, x), soft(x), atol=1e-6)
    h_soft = jax.hessian(lambda xx: soft(xx)[0, 1])(x[:1])
    h_relu = jax.hessian(lambda xx: model(xx)[0, 1])(x[:1])
    assert float(jnp.max(jnp.abs(h_relu))) == 0.0  # ReLU network: zero curvature
    assert float(jnp.max(jnp.abs(h_soft))) > 1e-4
    assert bool(jnp.all(jnp.isfinite(h_soft)))


def test_linen_pair_matches_nnx(small):
    model, x = small
    module, variables = nnx_to_linen(model)
    smod, svars = soften((module, variables), 4.0)
    np.testing.assert_allclose(smod.apply(svars, x), soften(model, 4.0)(x), atol=1e-5)
    np.testing.assert_allclose(module.apply(variables, x), model(x), atol=1e-5)


def test_resnet_and_explainers(small):
    model, x = small
    soft = soften(model, 1e4)
    # at large beta the explanations of the softened model match the original's
    np.testing.assert_allclose(lrp(soft, x, 1), lrp(model, x, 1), atol=1e-4)
    np.testing.assert_allclose(gradcam(soft, x, 1), gradcam(model, x, 1), atol=1e-3)
    res = ResNet(widths=(4, 8), rngs=nnx.Rngs(0))
    assert soften(res, 10.0)(x).shape == (2, 8)


def test_errors(small):
    model, _ = small
    for bad in (0.0, -1.0, float("inf"), "a", True):
        with pytest.raises(ExplanationError, match="beta"):
            soften(model, bad)
    with pytest.raises(ExplanationError, match="model"):
        soften(object(), 1.0)
