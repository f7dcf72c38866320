"""soften: ReLU -> softplus(beta x)/beta twins of NNX and Linen models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp._lrp import composites, lrp
from jaxlrp._lrp import rules as R
from jaxlrp._tracing import as_adapter, layers
from jaxlrp.cam import gradcam
from jaxlrp.errors import ExplanationError
from jaxlrp.models import VGG, ResNet
from jaxlrp.models.softening import soft_relu, soften, softened_beta
from jaxlrp.models.vgg import nnx_to_linen


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


@pytest.mark.slow
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


_RELU = jax.nn.relu


class _Probe(nnx.Module):
    """Calls jax.nn.relu functionally and records what jax.nn.relu is at call time."""

    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 3, rngs=rngs)
        self.seen = []

    def __call__(self, x):
        self.seen.append((jax.nn.relu is _RELU, nnx.relu is _RELU))
        return self.dense(jax.nn.relu(x))


def test_jax_nn_never_rebound():
    """soften() does not touch jax.nn or flax: the softened call sees the original
    functions, and the ReLU is replaced in the traced graph instead."""
    probe = _Probe(nnx.Rngs(0))
    soft = soften(probe, 2.0)
    x = jnp.linspace(-2.0, 2.0, 8).reshape(2, 4)
    out = soft(x)
    assert soft.seen == [(True, True)]
    expected = probe.dense(jnp.log1p(jnp.exp(2.0 * x)) / 2.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probe(x), probe.dense(jnp.maximum(x, 0.0)), rtol=1e-6)
    # under jit too (the copy is rebuilt from the pytree inside the trace)
    np.testing.assert_allclose(jax.jit(lambda m, xx: m(xx))(soft, x), expected, rtol=1e-5,
                               atol=1e-6)


def test_soft_model_keeps_module_paths(small):
    """Equations of the softened model carry the module paths (LRP composites by path)."""
    model, x = small
    soft = soften(model, 1e4)
    comp = composites.layer_map(conv=R.ZPlus(), dense=R.Epsilon(),
                                paths={"classifier": R.Epsilon(0.0)})
    np.testing.assert_allclose(lrp(soft, x, 1, comp), lrp(model, x, 1, comp), atol=1e-4)
    adapter = as_adapter(soft)
    jaxpr = jax.make_jaxpr(adapter.apply)(adapter.params, x)
    stacks = {str(e.source_info.name_stack) for e in jaxpr.jaxpr.eqns
              if e.primitive.name == "conv_general_dilated"}
    assert stacks == {"features/0/conv", "features/1/conv"}, stacks


def test_linen_soft_explainer_hooks(small):
    """CAM hooks of a softened Linen model run on the outer values (no leaked tracers)."""
    model, x = small
    pair = nnx_to_linen(model)
    soft_pair, soft_nnx = soften(pair, 4.0), soften(model, 4.0)
    np.testing.assert_allclose(gradcam(soft_pair, x, 1), gradcam(soft_nnx, x, 1), atol=1e-4)
    assert not np.allclose(np.asarray(gradcam(soft_nnx, x, 1)), np.asarray(gradcam(model, x, 1)),
                           atol=1e-3)
