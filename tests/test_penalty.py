"""explanation_penalty: gradients through explainers, training reduces it; second order."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlrp._hybrid import hybrid
from jaxlrp._lrp import lrp
from jaxlrp.cam import gradcam
from jaxlrp.errors import ExplanationError
from jaxlrp.models import VGG
from jaxlrp.models.softening import soften
from jaxlrp.penalty import explanation_penalty

EXPLAINERS = {"gradcam": gradcam, "lrp": lrp, "hybrid": hybrid}


@pytest.fixture(scope="module")
def setup():
    model = VGG(widths=(4, 8), dense=(8,), num_classes=3, input_size=16, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
    y = jnp.array([0, 1, 2, 1])
    mask = np.zeros((16, 16), bool)
    mask[:6, :6] = True
    return model, x, y, jnp.asarray(mask)


def test_value_matches_definition(setup):
    model, x, y, mask = setup
    maps = np.asarray(lrp(model, x, y))
    ref = (np.abs(maps).sum(-1) * np.asarray(mask)).sum((1, 2)) / 256
    np.testing.assert_allclose(explanation_penalty(lrp, model, x, y, mask, aggregate="none"), ref,
                               rtol=1e-5)
    sq = explanation_penalty(lrp, model, x, y, mask, aggregate="sum", kind="square")
    np.testing.assert_allclose(sq, ((maps**2).sum(-1) * np.asarray(mask)).sum() / 256, rtol=1e-5)
    # an empty mask costs nothing
    assert float(explanation_penalty(gradcam, model, x, y, jnp.zeros((4, 16, 16)))) == 0.0


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_parameter_gradients_nonzero_finite(setup, name):
    model, x, y, mask = setup
    explain = EXPLAINERS[name]

    def loss(m):
        return explanation_penalty(explain, m, x, y, mask)

    grads = jax.jit(nnx.grad(loss))(model)
    leaves = jax.tree_util.tree_leaves(nnx.state(grads, nnx.Param))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_parameter_gradient_matches_float64_finite_differences(setup, name):
    """d penalty / d params along random directions, in float64: central differences with
    step 1e-6 have truncation error O(h^2) ~ 1e-12 and rounding ~ 1e-16 / 1e-6 = 1e-10
    (relative), so 1e-6 is a tight bound that any wrong gradient term exceeds by far."""
    model, x, y, mask = setup
    explain = EXPLAINERS[name]
    jax.config.update("jax_enable_x64", True)
    try:
        graphdef, state = nnx.split(model)
        params = jax.tree.map(lambda a: a.astype(jnp.float64)
                              if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
        x64 = jnp.asarray(np.asarray(x, np.float64))

        def f(p):
            return explanation_penalty(explain, nnx.merge(graphdef, p), x64, y, mask)

        f = jax.jit(f)
        g = jax.jit(jax.grad(f))(params)
        rng = np.random.default_rng(0)
        h = 1e-6
        for _ in range(2):
            d = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
            up = jax.tree.map(lambda p, v: p + h * v, params, d)
            dn = jax.tree.map(lambda p, v: p - h * v, params, d)
            fd = (float(f(up)) - float(f(dn))) / (2 * h)
            ad = sum(float(jnp.vdot(a, v)) for a, v in
                     zip(jax.tree.leaves(g), jax.tree.leaves(d), strict=True))
            assert f(params).dtype == jnp.float64
            assert abs(ad) > 1e-8
            np.testing.assert_allclose(ad, fd, rtol=1e-6, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_training_steps_reduce_penalty(setup):
    model, x, y, mask = setup
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-2)

    def loss_fn(p):
        m = nnx.merge(graphdef, p)
        ce = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        return ce + 10.0 * explanation_penalty(lrp, m, x, y, mask)

    @jax.jit
    def step(p, o):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    pen = functools.partial(explanation_penalty, lrp, x=x, target=y, mask=mask)
    before = float(pen(model=nnx.merge(graphdef, params)))
    opt = tx.init(params)
    for _ in range(15):
        params, opt, _ = step(params, opt)
    after = float(pen(model=nnx.merge(graphdef, params)))
    assert after < 0.5 * before


@pytest.mark.slow
def test_second_order_through_hybrid_matches_finite_differences():
    # 24x24 input: the CAM layer is 12x12, large enough that the (min-max normalised,
    # thresholded) map is not locally constant in x (on 16x16 inputs of this random
    # model it is, and every derivative is exactly 0).
    model = VGG(widths=(8, 16), dense=(16,), num_classes=3, input_size=24, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (1, 24, 24, 3))
    with jax.enable_x64():
        m64 = soften(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), model), 3.0)
        x64 = jnp.asarray(x, jnp.float64)
        w = jnp.asarray(np.random.default_rng(0).normal(size=(1, 24, 24)))

        def f(xx):
            return jnp.sum(w * hybrid(m64, xx, 1, cam="gradcam"))

        grad = jax.grad(f)
        v = jnp.asarray(np.random.default_rng(1).normal(size=x64.shape))
        hv = jax.jvp(grad, (x64,), (v,))[1]  # Hessian-vector product (forward over reverse)
        eps = 1e-5
        fd = (grad(x64 + eps * v) - grad(x64 - eps * v)) / (2 * eps)
        assert bool(jnp.all(jnp.isfinite(hv)))
        assert float(jnp.max(jnp.abs(hv))) > 1e-6
        # float64 central differences: truncation O(eps^2), rounding ~1e-16/eps
        np.testing.assert_allclose(hv, fd, atol=1e-6 * float(jnp.max(jnp.abs(hv))) + 1e-9,
                                   rtol=1e-4)


def test_errors(setup):
    model, x, y, mask = setup
    with pytest.raises(ExplanationError, match="mask"):
        explanation_penalty(gradcam, model, x, y, jnp.ones((4, 8, 8)))
    with pytest.raises(ExplanationError, match="kind"):
        explanation_penalty(gradcam, model, x, y, mask, kind="l3")
    with pytest.raises(ExplanationError, match="aggregate"):
        explanation_penalty(gradcam, model, x, y, mask, aggregate="max")
    with pytest.raises(ExplanationError, match="explain"):
        explanation_penalty("gradcam", model, x, y, mask)
