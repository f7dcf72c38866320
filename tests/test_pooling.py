"""window_max: the same values and derivatives as lax.reduce_window_max, ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxlrp.lrp import graph, pooling

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
