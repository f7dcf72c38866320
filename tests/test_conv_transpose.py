"""conv_transpose.transpose_lhs: the same values as jax.vjp of the convolution, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxlrp._lrp import conv_transpose


@pytest.fixture(autouse=True)
def x64():
    """float64 for this module only (other test modules expect JAX's float32 default)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


# (x shape NHWC, kernel HWIO, strides, padding, lhs dilation, rhs dilation, groups)
CASES = [
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1), (1, 1), 1),
    ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), "SAME", (1, 1), (1, 1), 1),
    ((2, 9, 8, 3), (3, 2, 3, 4), (2, 3), "VALID", (1, 1), (1, 1), 1),  # dropped remainders
    ((2, 8, 8, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3)), (1, 1), (1, 1), 1),  # ResNet stem
    ((2, 8, 8, 2), (3, 3, 2, 4), (1, 1), ((2, 0), (0, 1)), (1, 1), (2, 2), 1),  # asymmetric
    ((2, 8, 8, 6), (3, 3, 1, 6), (1, 1), "SAME", (1, 1), (1, 1), 6),  # depthwise
    ((2, 8, 8, 6), (7, 7, 1, 12), (2, 2), "SAME", (1, 1), (1, 1), 6),  # depthwise x2
    ((2, 8, 8, 6), (3, 3, 2, 9), (1, 1), "SAME", (1, 1), (1, 1), 3),  # grouped
    ((2, 5, 5, 3), (3, 3, 3, 4), (1, 1), ((2, 2), (2, 2)), (2, 2), (1, 1), 1),  # ConvTranspose
    ((2, 8, 8, 3), (4, 4, 3, 5), (4, 4), "VALID", (1, 1), (1, 1), 1),  # ViT patchify
]


def _conv(x, w, strides, padding, lhs_dil, rhs_dil, groups, dn):
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dil, rhs_dil,
                                    dimension_numbers=dn, feature_group_count=groups)


def _params(x, w, strides, padding, lhs_dil, rhs_dil, groups, dn):
    """The equation's parameters, as the engine reads them from the jaxpr."""
    jaxpr = jax.make_jaxpr(lambda a, b: _conv(a, b, strides, padding, lhs_dil, rhs_dil,
                                              groups, dn))(x, w)
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    return eqn.params


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}s{c[2]}g{c[6]}")
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_equals_vjp(case, layout):
    xs, ks, strides, padding, lhs_dil, rhs_dil, groups = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=xs))
    w = jnp.asarray(rng.normal(size=ks))
    if layout == "NCHW":
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
        dn = ("NCHW", "OIHW", "NCHW")
    else:
        dn = ("NHWC", "HWIO", "NHWC")
    z, vjp = jax.vjp(lambda a: _conv(a, w, strides, padding, lhs_dil, rhs_dil, groups, dn), x)
    g = jnp.asarray(rng.normal(size=z.shape))
    params = _params(x, w, strides, padding, lhs_dil, rhs_dil, groups, dn)
    assert conv_transpose.supported(params)
    out = conv_transpose.transpose_lhs(g, w, x.shape, params)
    ref = vjp(g)[0]
    assert out.shape == x.shape and out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-12, atol=1e-12)


def test_kernel_keeps_the_forward_layout_in_a_loop():
    """Inside lax.map the explicit form keeps the forward's kernel dimension numbers (the
    vjp's swapped in/out kernel axes are what XLA:CPU runs on its slow path there)."""
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 5))
    dn = ("NHWC", "HWIO", "NHWC")
    params = _params(x, w, (1, 1), "SAME", (1, 1), (1, 1), 1, dn)
    g = jnp.ones((2, 8, 8, 5))
    f = jax.jit(lambda g: lax.map(lambda gg: conv_transpose.transpose_lhs(gg, w, x.shape,
                                                                        params), g[None]))
    via_vjp = jax.jit(lambda g: lax.map(
        lambda gg: jax.vjp(lambda a: lax.conv_general_dilated(a, w, (1, 1), "SAME",
                                                              dimension_numbers=dn), x)[1](gg)[0],
        g[None]))
    assert "01oi" in via_vjp.lower(g).compile().as_text()
    assert "01oi" not in f.lower(g).compile().as_text()


def test_batch_groups_fall_back_to_vjp():
    assert not conv_transpose.supported({"batch_group_count": 2})
