"""Every LRP rule against a slow matrix-form reference, in float64.

The reference is written independently of jaxlrp: a Dense layer is its weight
matrix, a conv layer is unrolled into an explicit (n_in, n_out) matrix with
Python loops over output positions and kernel taps, and each rule is its
textbook formula on that matrix, one output unit at a time.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlrp._lrp import rules as R
from jaxlrp.errors import ExplanationError


@pytest.fixture(autouse=True, scope="module")
def x64():
    """float64 for this module only (other test modules expect JAX's float32 default)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)

TOL = 1e-10


def assert_close(got, want):
    """Agreement to 1e-10 relative to the largest relevance (near-zero denominators in
    float64 make single entries large, so an absolute bound alone would be scale-blind)."""
    got, want = np.asarray(got), np.asarray(want)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=TOL * scale, rtol=TOL)


# ----------------------------------------------------------------------------- reference


def conv_matrix(kernel, in_shape, stride, padding, groups, dilation=1):
    """Unroll an N-D conv (channels last, kernel (*k, cin/groups, cout)) into a matrix."""
    spatial = in_shape[:-1]
    cin = in_shape[-1]
    ks = kernel.shape[:-2]
    cout = kernel.shape[-1]
    cin_g, cout_g = cin // groups, cout // groups
    out_spatial = [
        (s + padding[d][0] + padding[d][1] - dilation * (k - 1) - 1) // stride + 1
        for d, (s, k) in enumerate(zip(spatial, ks, strict=True))
    ]
    n_in = int(np.prod(in_shape))
    out_shape = (*out_spatial, cout)
    m = np.zeros((n_in, int(np.prod(out_shape))))
    for opos in itertools.product(*[range(o) for o in out_spatial]):
        for co in range(cout):
            g = co // cout_g
            j = np.ravel_multi_index((*opos, co), out_shape)
            for kpos in itertools.product(*[range(k) for k in ks]):
                ipos = [
                    opos[d] * stride + kpos[d] * dilation - padding[d][0] for d in range(len(ks))
                ]
                if any(p < 0 or p >= spatial[d] for d, p in enumerate(ipos)):
                    continue
                for ci in range(cin_g):
                    i = np.ravel_multi_index((*ipos, g * cin_g + ci), in_shape)
                    m[i, j] += kernel[(*kpos, ci, co)]
    return m, out_shape


def stab(z, eps):
    return z + np.where(z >= 0, eps, -eps)


def ref_rule(name, x, m, b, r, **kw):
    """Textbook formulas, looping over output units j."""
    n, k = m.shape
    out = np.zeros(n)
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    for j in range(k):
        w = m[:, j]
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        bj = b[j]
        if name == "epsilon":
            z = x @ w + bj
            out += x * w * r[j] / stab(z, kw["eps"])
        elif name == "zplus":
            z = xp @ wp + xn @ wn + max(bj, 0)
            out += (xp * wp + xn * wn) * r[j] / stab(z, 1e-6)
        elif name == "alphabeta":
            a, be = kw["alpha"], kw["beta"]
            zp = xp @ wp + xn @ wn + max(bj, 0)
            zn = xp @ wn + xn @ wp + min(bj, 0)
            out += a * (xp * wp + xn * wn) * r[j] / stab(zp, 1e-6)
            out -= be * (xp * wn + xn * wp) * r[j] / stab(zn, 1e-6)
        elif name == "gamma":
            g = kw["gamma"]
            z = x @ w + bj
            wu, wd = w + g * wp, w + g * wn
            if z > 0:
                d = xp @ wu + xn @ wd + bj + g * max(bj, 0)
                out += (xp * wu + xn * wd) * r[j] / stab(d, 1e-6)
            elif z < 0:
                d = xp @ wd + xn @ wu + bj + g * min(bj, 0)
                out += (xp * wd + xn * wu) * r[j] / stab(d, 1e-6)
        elif name == "zbox":
            lo, hi = kw["low"], kw["high"]
            z = x @ w + bj - (lo @ wp + max(bj, 0)) - (hi @ wn + min(bj, 0))
            out += (x * w - lo * wp - hi * wn) * r[j] / stab(z, 1e-6)
        elif name == "wsquare":
            out += w**2 * r[j] / stab(np.sum(w**2) + bj**2, 1e-6)
        elif name == "flat":
            support = (w != 0).astype(float) if kw.get("conv") else np.ones_like(w)
            out += support * r[j] / stab(np.sum(support), 1e-6)
        elif name == "wplus":
            z = x @ wp + bj
            out += x * wp * r[j] / stab(z, 1e-9)
    return out


# ----------------------------------------------------------------------------- jaxlrp layers


def dense_layer(w, b):
    core = lambda x, ww: jax.lax.dot_general(x, ww, (((1,), (0,)), ((), ())))
    return R.LinearLayer("dense", "d", core, jnp.asarray(w), jnp.asarray(b))


def conv_layer(kernel, b, stride, padding, groups, nd):
    spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[nd]

    def core(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride,) * nd, padding, dimension_numbers=spec, feature_group_count=groups
        )

    return R.LinearLayer("conv", "c", core, jnp.asarray(kernel), jnp.asarray(b))


RULES = {
    "epsilon": (lambda: R.Epsilon(1e-3), {"eps": 1e-3}),
    "lrp0": (lambda: R.Epsilon(0.0), {"eps": 0.0}),
    "zplus": (lambda: R.ZPlus(), {}),
    "alpha1beta0": (lambda: R.Alpha1Beta0(), {"alpha": 1.0, "beta": 0.0}),
    "alpha2beta1": (lambda: R.Alpha2Beta1(), {"alpha": 2.0, "beta": 1.0}),
    "gamma": (lambda: R.Gamma(0.25), {"gamma": 0.25}),
    "wsquare": (lambda: R.WSquare(), {}),
    "flat": (lambda: R.Flat(), {}),
    "wplus": (lambda: R.WPlus(), {}),
}
REF_NAME = {"lrp0": "epsilon", "alpha1beta0": "alphabeta", "alpha2beta1": "alphabeta"}


def _ref(name, x, m, b, r, **extra):
    rule_kw = dict(RULES[name][1]) if name in RULES else {}
    rule_kw.update(extra)
    return ref_rule(REF_NAME.get(name, name), x, m, b, r, **rule_kw)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_rules_match_matrix_reference(name, seed, bias):
    rng = np.random.default_rng(seed)
    n, k = 7, 5
    w = rng.normal(size=(n, k))
    b = rng.normal(size=k) if bias else np.zeros(k)
    x = rng.normal(size=(1, n))
    r = rng.normal(size=(1, k))
    (got,) = RULES[name][0]()(dense_layer(w, b), (jnp.asarray(x),), jnp.asarray(r))
    want = _ref(name, x[0], w, b, r[0])
    assert_close(np.asarray(got)[0], want)


CONV_CASES = [
    # nd, in spatial, cin, cout, kernel, stride, padding, groups
    (2, (5, 6), 2, 3, (3, 3), 1, ((1, 1), (1, 1)), 1),
    (2, (6, 6), 4, 4, (3, 3), 2, ((0, 1), (1, 0)), 2),
    (2, (5, 5), 3, 3, (3, 3), 1, ((1, 1), (1, 1)), 3),  # depthwise
    (2, (6, 5), 2, 4, (2, 2), 2, ((0, 0), (0, 0)), 1),
    (1, (9,), 2, 3, (3,), 1, ((1, 1),), 1),
    (1, (10,), 4, 2, (4,), 3, ((2, 1),), 2),
]


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("bias", [True, False])
def test_conv_rules_match_unrolled_matrix(name, case, bias):
    nd, spatial, cin, cout, ks, stride, padding, groups = CONV_CASES[case]
    rng = np.random.default_rng(100 + case)
    kernel = rng.normal(size=(*ks, cin // groups, cout))
    b = rng.normal(size=cout) if bias else np.zeros(cout)
    in_shape = (*spatial, cin)
    x = rng.normal(size=in_shape)
    m, out_shape = conv_matrix(kernel, in_shape, stride, padding, groups)
    r = rng.normal(size=out_shape)
    layer = conv_layer(kernel, b, stride, list(padding), groups, nd)
    (got,) = RULES[name][0]()(layer, (jnp.asarray(x)[None],), jnp.asarray(r)[None])
    bias_flat = np.tile(b, int(np.prod(out_shape[:-1])))
    extra = {"conv": True} if name == "flat" else {}
    want = _ref(name, x.ravel(), m, bias_flat, r.ravel(), **extra)
    assert_close(np.asarray(got)[0].ravel(), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_zbox_matches_matrix_reference(seed):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(3, 3, 3, 4))
    b = rng.normal(size=4)
    x = rng.uniform(0, 1, size=(5, 5, 3))
    low, high = np.zeros_like(x), np.ones_like(x)
    m, out_shape = conv_matrix(kernel, x.shape, 1, ((1, 1), (1, 1)), 1)
    r = rng.normal(size=out_shape)
    layer = conv_layer(kernel, b, 1, [(1, 1), (1, 1)], 1, 2)
    (got,) = R.ZBox(0.0, 1.0)(layer, (jnp.asarray(x)[None],), jnp.asarray(r)[None])
    want = ref_rule("zbox", x.ravel(), m, np.tile(b, 25), r.ravel(),
                    low=low.ravel(), high=high.ravel())
    assert_close(np.asarray(got)[0].ravel(), want)


def test_norm_and_pass_and_gradient_on_function_layers():
    x = jnp.asarray(np.random.default_rng(0).uniform(0.1, 1, size=(1, 4, 4, 2)))
    pool = R.FunctionLayer("pool", "p", lambda v: v.sum(axis=(1, 2)))
    r = jnp.asarray([[1.0, 2.0]])
    (got,) = R.Norm()(pool, (x,), r)
    xs = np.asarray(x)
    want = xs / xs.sum(axis=(1, 2), keepdims=True) * np.asarray(r)[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    (passed,) = R.Pass()(R.FunctionLayer("activation", "a", jax.nn.relu), (x,), x * 2)
    np.testing.assert_allclose(passed, x * 2)
    mp = R.FunctionLayer("gradient", "m", lambda v: v.max(axis=(1, 2)))
    (routed,) = R.Gradient()(mp, (x,), r)
    assert float(routed.sum()) == pytest.approx(3.0)
    assert int((routed != 0).sum()) == 2


def test_rule_errors():
    with pytest.raises(ExplanationError, match="alpha - beta must equal 1"):
        R.AlphaBeta(3.0, 1.0)
    with pytest.raises(ExplanationError, match=">= 0"):
        R.AlphaBeta(-1.0, -2.0)
    with pytest.raises(ExplanationError, match="needs both bounds"):
        R.ZBox()
    with pytest.raises(ExplanationError, match="epsilon"):
        R.Epsilon(-1.0)
    pool = R.FunctionLayer("pool", "p", lambda v: v.sum(axis=1))
    with pytest.raises(ExplanationError, match="needs a layer with weights"):
        R.ZPlus()(pool, (jnp.ones((1, 3)),), jnp.ones((1,)))


def test_lrp0_with_zero_output_gives_zero_not_nan():
    layer = dense_layer(np.ones((3, 2)), np.zeros(2))
    (got,) = R.Epsilon(0.0)(layer, (jnp.zeros((1, 3)),), jnp.ones((1, 2)))
    assert np.all(np.isfinite(got)) and np.all(np.asarray(got) == 0)
