"""window_max: the same values and derivatives as lax.reduce_window_max, ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxlrp._lrp import graph, pooling

# (shape, window, strides, padding): VGG 2x2/2, ResNet stem 3x3/2 padded, odd sizes
# that drop a remainder, overlapping stride 1, a pool over the channel axis.
CASES = [
    ((2, 8, 8, 3), (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4),
    ((2, 9, 9, 3), (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
    ((2, 7, 9, 3), (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4),
    ((2, 8, 8, 3), (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
    ((2, 4, 4, 6), (1, 1, 1, 2), (1, 1, 1, 2), ((0, 0),) * 4),
]


def _reference(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}/{c[2]}")
@pytest.mark.parametrize("levels", [3, None], ids=["ties", "continuous"])
def test_values_and_vjp_equal_reduce_window_max(case, levels):
    shape, window, strides, padding = case
    rng = np.random.default_rng(0)
    # integer levels make most windows contain ties: the cotangent must go to the
    # first maximal element, as select_and_scatter_add sends it
    raw = rng.integers(0, levels, shape) if levels else rng.normal(size=shape)
    x = jnp.asarray(raw, jnp.float32)
    ref, ref_vjp = jax.vjp(lambda v: _reference(v, window, strides, padding), x)
    out, out_vjp = jax.vjp(lambda v: pooling.window_max(v, window, strides, padding), x)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    g = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    np.testing.assert_array_equal(out_vjp(g)[0], ref_vjp(g)[0])


def test_second_order_and_vmap():
    """jvp-of-grad and vmap go through (no custom_vjp), and match the lax pool."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 2)))
    v = jnp.asarray(rng.normal(size=x.shape))

    def loss(pool, xx):
        return jnp.sum(jnp.sin(pool(jnp.tanh(xx), (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4)))

    def hvp(pool):
        return jax.jvp(jax.grad(lambda xx: loss(pool, xx)), (x,), (v,))[1]

    np.testing.assert_allclose(hvp(pooling.window_max), hvp(_reference), rtol=1e-6, atol=1e-7)
    batched = jax.vmap(lambda xx: pooling.window_max(xx, (2, 2, 1), (2, 2, 1), ((0, 0),) * 3))
    np.testing.assert_array_equal(batched(x), nnx.max_pool(x, (2, 2), (2, 2)))


def test_engine_uses_window_max_for_max_pools():
    """graph.evaluate runs reduce_window_max through window_max (same values)."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
    closed = jax.make_jaxpr(lambda v: nnx.max_pool(v, (2, 2), (2, 2)))(x)
    eqns, in_ids, consts, outs, _ = graph.flatten(closed, 1)
    assert [e.name for e in eqns] == ["reduce_window_max"]
    env = graph.evaluate(eqns, {**consts, in_ids[0]: x})
    np.testing.assert_array_equal(env[outs[0]], nnx.max_pool(x, (2, 2), (2, 2)))
    jaxpr = jax.make_jaxpr(lambda v: graph.evaluate(eqns, {in_ids[0]: v})[outs[0]])(x)
    assert "reduce_window_max" not in str(jaxpr)
    assert not pooling.supported({"base_dilation": (1, 2, 2, 1), "window_dilation": (1,) * 4})


def test_nan_propagates_like_lax_max():
    """A NaN at any window position gives NaN, as reduce_window_max does."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 1, 1, 0] = np.nan  # last position of the first 2x2 window
    x[0, 2, 3, 0] = np.nan  # second position of the last window
    args = ((1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4)
    out = pooling.window_max(jnp.asarray(x), *args)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(_reference(jnp.asarray(x), *args)))
    assert np.isnan(out).sum() == 2


# ----------------------------------------------------------------------------- max_pool

CHOICES = [("xla", "xla"), ("select", "select"), ("xla", "select"), ("select", "xla")]


@pytest.mark.slow
@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: "/".join(c))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}/{c[2]}")
def test_max_pool_every_lowering_equals_reduce_window_max(case, choice):
    """Whichever lowering computes the values and the derivative, both are bitwise XLA's."""
    shape, window, strides, padding = case
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(0, 3, shape), jnp.float32)  # ties in most windows
    ref, ref_vjp = jax.vjp(lambda v: _reference(v, window, strides, padding), x)
    out, out_vjp = jax.vjp(
        lambda v: pooling.max_pool(v, window, strides, padding, choice=choice), x)
    np.testing.assert_array_equal(out, ref)
    g = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    np.testing.assert_array_equal(out_vjp(g)[0], ref_vjp(g)[0])
    # forward mode too (the custom_jvp rule of the mixed lowerings)
    t = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_array_equal(
        jax.jvp(lambda v: pooling.max_pool(v, window, strides, padding, choice=choice),
                (x,), (t,))[1],
        jax.jvp(lambda v: _reference(v, window, strides, padding), (x,), (t,))[1])


def test_max_pool_mixed_second_order_vmap_and_jaxpr():
    """XLA values with the select chain's derivative: hvp and vmap match; the jaxpr of the
    gradient has no select_and_scatter_add, the plain forward keeps reduce_window_max."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 2)), jnp.float32)
    v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    dims, strides, pads = (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4

    def mixed(xx, *a):
        return pooling.max_pool(xx, *a, choice=("xla", "select"))

    def hvp(pool):
        def loss(xx):
            return jnp.sum(jnp.sin(pool(jnp.tanh(xx), dims, strides, pads)))
        return jax.jvp(jax.grad(loss), (x,), (v,))[1]

    np.testing.assert_allclose(hvp(mixed), hvp(_reference), rtol=1e-6, atol=1e-7)
    batched = jax.vmap(lambda xx: mixed(xx, (2, 2, 1), (2, 2, 1), ((0, 0),) * 3))
    np.testing.assert_array_equal(batched(x), nnx.max_pool(x, (2, 2), (2, 2)))
    fwd = str(jax.make_jaxpr(lambda xx: mixed(xx, dims, strides, pads))(x))
    assert "reduce_window_max" in fwd
    grad = str(jax.make_jaxpr(jax.grad(lambda xx: mixed(xx, dims, strides, pads).sum()))(x))
    assert "select_and_scatter_add" not in grad
    with pytest.raises(ValueError, match="choice"):
        pooling.max_pool(x, dims, strides, pads, choice=("fast", "xla"))


def test_lowering_rule():
    """The rule answers one of the lowerings; off CPU it keeps XLA's; on CPU the
    derivative is the select chain and large per-example inputs use it forward too."""
    args = ((1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4)
    assert pooling.lowering("gpu", (8, 224, 224, 64), *args) == ("xla", "xla")
    assert pooling.lowering("cpu", (256, 64, 64, 16), *args) == ("xla", "select")
    assert pooling.lowering("cpu", (8, 224, 224, 64), *args) == ("select", "select")
    # VGG16's last pool: reduce_window_max there slowed the whole VGG16 forward 2.1x
    assert pooling.lowering("cpu", (8, 14, 14, 512), *args) == ("select", "select")
    for shape in [(1, 8, 8, 1), (4, 112, 112, 128), (2, 7, 7, 512)]:
        f, d = pooling.lowering("cpu", shape, *args)
        assert f in pooling.LOWERINGS and d in pooling.LOWERINGS


# ----------------------------------------------------------------------------- fast_forward


class _PoolNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(4 * 4 * 4, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), (2, 2))
        return self.dense(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("choice", [None, ("select", "select"), ("xla", "select")])
def test_fast_forward_same_values_and_gradients(choice):
    """fast_forward.call gives the model's logits and input gradient bitwise, under jit."""
    from jaxlrp._lrp import fast_forward
    from jaxlrp._tracing import as_adapter

    model = _PoolNet(rngs=nnx.Rngs(0))
    ad = as_adapter(model)
    x = jnp.asarray(np.random.default_rng(5).integers(0, 3, (2, 8, 8, 3)), jnp.float32)

    def score(apply, xx):
        return apply(ad.params, xx)[:, 1].sum()

    def fast(p, xx):
        return fast_forward.call(ad.apply, p, xx, pool=choice)

    np.testing.assert_array_equal(jax.jit(fast)(ad.params, x), ad.apply(ad.params, x))
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda xx: score(fast, xx)))(x),
                                  jax.grad(lambda xx: score(ad.apply, xx))(x))
    if choice == ("select", "select"):
        assert "reduce_window_max" not in str(jax.make_jaxpr(fast)(ad.params, x))


def test_fast_forward_kernels_and_pytree_outputs():
    """``kernels`` maps each conv kernel (here to W+): equal to the model with W+ weights;
    pytree outputs and closed-over values come back as ``fn`` returns them."""
    from jaxlrp._lrp import fast_forward

    model = _PoolNet(rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 8, 3)), jnp.float32)
    out = fast_forward.call(lambda xx: {"y": model(xx), "x": xx}, x,
                            kernels=lambda w: jnp.maximum(w, 0))
    plus = _PoolNet(rngs=nnx.Rngs(1))
    plus.conv.kernel[...] = jnp.maximum(plus.conv.kernel[...], 0)
    np.testing.assert_allclose(out["y"], plus(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["x"], x)
    assert not np.allclose(out["y"], model(x))


def test_cam_and_metric_forwards_use_the_fast_pool():
    """The CAM's forward/backward and the metrics' forwards run through fast_forward: the
    same activations, gradients and logits, and on CPU no select_and_scatter_add."""
    from jaxlrp._tracing import as_adapter
    from jaxlrp.cam import activations_and_gradients
    from jaxlrp.metrics._common import model_handle

    model = _PoolNet(rngs=nnx.Rngs(2))
    ad = as_adapter(model)
    x = jnp.asarray(np.random.default_rng(7).integers(0, 3, (2, 8, 8, 3)), jnp.float32)
    t = jnp.asarray([1, 3], jnp.int32)
    acts, grads, logits = activations_and_gradients(ad, ad.params, x, t, "conv")
    np.testing.assert_array_equal(logits, model(x))
    np.testing.assert_array_equal(acts, model.conv(x))

    def from_conv(a):
        h = nnx.max_pool(nnx.relu(a), (2, 2), (2, 2))
        return jnp.take_along_axis(model.dense(h.reshape(2, -1)), t[:, None], 1).sum()

    np.testing.assert_array_equal(grads, jax.grad(from_conv)(model.conv(x)))
    jaxpr = str(jax.make_jaxpr(
        lambda xx: activations_and_gradients(ad, ad.params, xx, t, "conv"))(x))
    assert "select_and_scatter_add" not in jaxpr
    fwd, params, _ = model_handle(model, x)
    np.testing.assert_array_equal(fwd.apply(params, x), model(x))
