"""Fast properties of jaxlrp.cam on tiny NNX / Linen CNNs (no torch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxlrp
from jaxlrp import cam
from jaxlrp.errors import ExplanationError

METHODS = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam"]
SIZE = 12
CLASSES = 5


class Block(nnx.Module):
    def __init__(self, cin, cout, act, rngs, dtype=jnp.float32):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", param_dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.act(self.conv(x))


class Net(nnx.Module):
    """conv-act, maxpool, conv-act ('b2', 6x6), flatten, dense."""

    def __init__(self, rngs, act=jax.nn.relu, dtype=jnp.float32, size=SIZE):
        self.b1 = Block(3, 4, act, rngs, dtype)
        self.b2 = Block(4, 6, act, rngs, dtype)
        self.head = nnx.Linear((size // 2) ** 2 * 6, CLASSES, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(self.b1(x), (2, 2), (2, 2))
        x = self.b2(x)
        return self.head(x.reshape(x.shape[0], -1))


class LBlock(nn.Module):
    cout: int

    @nn.compact
    def __call__(self, x):
        return jax.nn.relu(nn.Conv(self.cout, (3, 3), padding="SAME", name="conv")(x))


class LNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(LBlock(4, name="b1")(x), (2, 2), (2, 2))
        x = LBlock(6, name="b2")(x)
        return nn.Dense(CLASSES, name="head")(x.reshape(x.shape[0], -1))


def _init(make, seed: int):
    """Build an NNX model with numpy-random parameters (no jax.random compilation):
    kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2)."""
    gdef, state = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)

    def fill(s):
        std = 0.1 if len(s.shape) == 1 else 1 / np.sqrt(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.standard_normal(s.shape) * std, s.dtype)

    return nnx.merge(gdef, jax.tree_util.tree_map(fill, state))


def _rand(seed, shape, dtype=np.float32, uniform=False):
    rng = np.random.default_rng(seed)
    a = rng.random(shape) if uniform else rng.standard_normal(shape)
    return jnp.asarray(a.astype(dtype))


def _linen_twin(m: Net):
    """Linen twin with the NNX model's parameters."""

    def conv(c):
        return {"conv": {"kernel": c.conv.kernel[...], "bias": c.conv.bias[...]}}

    params = {
        "b1": conv(m.b1),
        "b2": conv(m.b2),
        "head": {"kernel": m.head.kernel[...], "bias": m.head.bias[...]},
    }
    return jaxlrp.linen(LNet(), {"params": params})


@pytest.fixture(scope="module")
def model():
    return _init(lambda: Net(nnx.Rngs(0)), 0)


@pytest.fixture(scope="module")
def x():
    return _rand(7, (3, SIZE, SIZE, 3), uniform=True)


TARGETS = jnp.array([0, 3, 1])


def _f(name):
    f = getattr(cam, name)
    return (lambda *a, **k: f(*a, chunk_size=4, **k)) if name == "scorecam" else f


@pytest.fixture(scope="module")
def maps(model, x):
    """Default maps and raw layer-resolution maps for every method (one jit each)."""
    out = {}
    for name in METHODS:
        f = _f(name)

        @jax.jit
        def both(m, xx, f=f):
            return f(m, xx, TARGETS), f(m, xx, TARGETS, relu=False, normalize=False,
                                        upsample=False)

        out[name], out[name + "/raw"] = both(model, x)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_shapes_and_range(maps, name):
    m = maps[name]
    assert m.shape == (3, SIZE, SIZE) and m.dtype == jnp.float32
    assert float(m.min()) == 0.0 and abs(float(m.max()) - 1.0) < 1e-6
    assert maps[name + "/raw"].shape == (3, SIZE // 2, SIZE // 2)


@pytest.mark.parametrize("name", ["gradcam", "scorecam"])
def test_eager_equals_jit_and_default_layer(model, x, maps, name):
    # default layer: the last spatial module with params ('b2')
    eager = _f(name)(model, x, TARGETS, "b2")
    np.testing.assert_allclose(eager, maps[name], atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_batched_equals_per_example(model, x, maps, name):
    g = _f(name)
    f = jax.jit(lambda m, xx, t: g(m, xx, t, relu=False, normalize=False, upsample=False))
    for i in range(3):
        one = f(model, x[i:i + 1], TARGETS[i:i + 1])
        np.testing.assert_allclose(one[0], maps[name + "/raw"][i], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vmap_over_batches(model, x):
    xs = jnp.stack([x, x[::-1]])
    out = jax.vmap(lambda xx: cam.gradcam(model, xx, 2))(xs)
    np.testing.assert_allclose(out[0], cam.gradcam(model, x, 2), atol=1e-5)
    np.testing.assert_allclose(out[1], cam.gradcam(model, x[::-1], 2), atol=1e-5)


def test_postprocessing_order(maps):
    raw = maps["gradcam/raw"]
    # ReLU -> min-max at layer resolution -> bilinear resize -> min-max
    expect = jaxlrp._image.minmax_normalize(jaxlrp._image.resize(
        jaxlrp._image.minmax_normalize(jnp.maximum(raw, 0)), (SIZE, SIZE)))
    np.testing.assert_allclose(maps["gradcam"], expect, atol=1e-6)


@pytest.mark.slow
def test_weightings_by_hand(model, x):
    ad = jaxlrp._tracing.as_adapter(model)
    a, g, logits = cam.activations_and_gradients(ad, ad.params, x, TARGETS, "b2")
    # the gradient is that of each example's target logit w.r.t. the layer output
    def logit_from_b2(a0, i):
        h = a0.reshape(1, -1) @ model.head.kernel[...] + model.head.bias[...]
        return h[0, TARGETS[i]]
    for i in range(3):
        np.testing.assert_allclose(g[i], jax.grad(logit_from_b2)(a[i:i + 1], i)[0], rtol=1e-5,
                                   atol=1e-7)
    np.testing.assert_allclose(logits, model(x), rtol=1e-6)
    w = g.mean(axis=(1, 2))
    np.testing.assert_allclose(
        cam.gradcam(model, x, TARGETS, relu=False, normalize=False, upsample=False),
        (a * w[:, None, None, :]).sum(-1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        cam.hirescam(model, x, TARGETS, relu=False, normalize=False, upsample=False),
        (a * g).sum(-1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["gradcam", "xgradcam", "layercam", "hirescam"])
def test_invariant_to_positive_logit_scaling(model, x, maps, name):
    """These maps are linear in the gradient: scaling the logits by s > 0 scales the raw map
    by s and leaves the normalised map unchanged."""
    scaled = nnx.clone(model)
    scaled.head.kernel[...] = 3.0 * scaled.head.kernel[...]
    scaled.head.bias[...] = 3.0 * scaled.head.bias[...]
    raw = _f(name)(scaled, x, TARGETS, relu=False, normalize=False, upsample=False)
    np.testing.assert_allclose(raw, 3.0 * maps[name + "/raw"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_f(name)(scaled, x, TARGETS), maps[name], atol=1e-5)


@pytest.mark.parametrize("name", ["gradcam_pp", "scorecam"])
def test_not_invariant_to_logit_scaling(model, x, maps, name):
    """Grad-CAM++ (alpha = g^2 / (2 g^2 + sum(A) g^3)) and Score-CAM (softmax over channel
    scores) are not homogeneous in the logit scale: scaling by 3 changes the map."""
    scaled = nnx.clone(model)
    scaled.head.kernel[...] = 3.0 * scaled.head.kernel[...]
    scaled.head.bias[...] = 3.0 * scaled.head.bias[...]
    diff = jnp.abs(_f(name)(scaled, x, TARGETS) - maps[name]).max()
    assert diff > 1e-2


def test_gradcam_pp_alpha_closed_form():
    """The weights agree with a direct evaluation of the exp(score) closed form."""
    a = _rand(0, (2, 3, 4, 5), uniform=True)
    g = _rand(1, (2, 3, 4, 5))
    g = g.at[0, 0, 0, 0].set(0.0)
    w = cam.gradcam_pp_weights(a, g)
    an, gn = np.asarray(a, np.float64), np.asarray(g, np.float64)
    expect = np.zeros((2, 5))
    for b in range(2):
        for c in range(5):
            s = an[b, :, :, c].sum()
            for i in range(3):
                for j in range(4):
                    gij = gn[b, i, j, c]
                    if gij != 0:
                        alpha = gij**2 / (2 * gij**2 + s * gij**3 + 1e-6)
                        expect[b, c] += max(gij, 0) * alpha
    np.testing.assert_allclose(w, expect, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_nnx_and_linen_agree(model, x, maps, name):
    lm = _linen_twin(model)
    kw = dict(relu=False, normalize=False, upsample=False)
    np.testing.assert_allclose(_f(name)(lm, x, TARGETS, "b2", **kw), maps[name + "/raw"],
                               rtol=1e-5, atol=1e-6)
    pair = (lm.module, lm.variables)
    np.testing.assert_allclose(_f(name)(pair, x, TARGETS, **kw), maps[name + "/raw"],
                               rtol=1e-5, atol=1e-6)


def test_scorecam_chunking_does_not_change_result(model, x, maps):
    for chunk in (1, 7, 1000):
        out = cam.scorecam(model, x, TARGETS, relu=False, normalize=False, upsample=False,
                           chunk_size=chunk)
        np.testing.assert_allclose(out, maps["scorecam/raw"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ExplanationError, match="chunk_size"):
        cam.scorecam(model, x, 0, chunk_size=0)


def test_predicted_target_is_argmax(model, x):
    pred = jnp.argmax(model(x), -1)
    np.testing.assert_allclose(cam.gradcam(model, x), cam.gradcam(model, x, pred), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "scorecam"])
def test_grad_matches_finite_differences(name):
    """jax.grad of a scalar of the (normalised, upsampled) map, w.r.t. the input and the NNX
    model's parameters, against central differences in float64 on a smooth (softplus) CNN."""
    with jax.enable_x64(True):
        m = _init(lambda: Net(nnx.Rngs(3), act=jax.nn.softplus, dtype=jnp.float64, size=8), 3)
        xx = _rand(2, (2, 8, 8, 3), np.float64, uniform=True)
        t = jnp.array([1, 4])
        wts = _rand(5, (2, 8, 8), np.float64)
        f = _f(name)

        def loss(mm, xi):
            return jnp.sum(f(mm, xi, t) * wts)

        gm, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(m, xx)
        assert isinstance(gm, Net)  # the gradient w.r.t. an NNX model is a model
        gdef, state = nnx.split(m)
        _, gstate = nnx.split(gm)
        leaves, tree = jax.tree_util.tree_flatten(state)
        dirs = [_rand(10 + i, a.shape, np.float64) for i, a in enumerate(leaves)]
        dstate = jax.tree_util.tree_unflatten(tree, dirs)
        v = _rand(6, xx.shape, np.float64)

        @jax.jit
        def at(ex, ep):
            s = jax.tree_util.tree_map(lambda a, d: a + ep * d, state, dstate)
            return loss(nnx.merge(gdef, s), xx + ex * v)

        # central differences: error O(h^2) (observed 1.8e-3, 1.8e-5 relative at h=1e-4,
        # 1e-5 for Grad-CAM++); at h=1e-6 truncation ~2e-7 and float64 round-off ~1e-10
        h = 1e-6
        fd_x = (at(h, 0.0) - at(-h, 0.0)) / (2 * h)
        fd_p = (at(0.0, h) - at(0.0, -h)) / (2 * h)
        an_p = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(gstate), dirs,
                                                  strict=True))
        assert abs(float(fd_x)) > 1e-3 and abs(float(fd_p)) > 1e-3
        np.testing.assert_allclose(jnp.vdot(gx, v), fd_x, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(an_p, fd_p, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs(model, x):
    with pytest.raises(ExplanationError, match="rank 4"):
        cam.gradcam(model, x[0])
    with pytest.raises(ExplanationError, match="x"):
        cam.gradcam(model, jnp.ones((1, SIZE, SIZE, 4)))
    with pytest.raises(ExplanationError, match="floating"):
        cam.gradcam(model, jnp.ones((1, SIZE, SIZE, 3), jnp.int32))
    bad = x.at[1, 2, 3, 0].set(jnp.nan)
    with pytest.raises(ExplanationError, match=r"NaN or Inf.*\[1\]"):
        cam.gradcam(model, bad)
    with pytest.raises(ExplanationError, match="NaN or Inf"):
        cam.scorecam(model, x.at[0, 0, 0, 0].set(jnp.inf))
    with pytest.raises(ExplanationError, match="out of range"):
        cam.gradcam(model, x, CLASSES)
    with pytest.raises(ExplanationError, match="out of range"):
        cam.layercam(model, x, jnp.array([0, -1, 2]))
    with pytest.raises(ExplanationError, match="target"):
        cam.gradcam(model, x, "best")
    with pytest.raises(ExplanationError, match=r"no submodule 'b3'.*b1.*b2.*head"):
        cam.gradcam(model, x, 0, "b3")
    with pytest.raises(ExplanationError, match="'head' outputs shape"):
        cam.gradcam_pp(model, x, 0, "head")
    with pytest.raises(ExplanationError, match="layer"):
        cam.gradcam(model, x, 0, 3)
    with pytest.raises(ExplanationError, match="variables"):
        cam.gradcam(LNet(), x)


def test_traced_bad_values_poison_only_their_example(model, x):
    f = jax.jit(lambda xx, t: cam.gradcam(model, xx, t))
    out = f(x.at[1, 0, 0, 0].set(jnp.nan), TARGETS)
    assert jnp.isnan(out[1]).all()
    assert jnp.isfinite(out[0]).all() and jnp.isfinite(out[2]).all()
    out = f(x, jnp.array([0, 99, 1]))
    assert jnp.isnan(out[1]).all() and jnp.isfinite(out[jnp.array([0, 2])]).all()
    np.testing.assert_allclose(out[0], cam.gradcam(model, x[:1], 0)[0], atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_constant_input_gives_zero_maps(model, name):
    # zero biases and zero input: every activation is 0, the raw map is exactly 0
    m0 = nnx.clone(model)
    for blk in (m0.b1, m0.b2):
        blk.conv.bias[...] = jnp.zeros_like(blk.conv.bias[...])
    z = jnp.zeros((2, SIZE, SIZE, 3))
    out = _f(name)(m0, z, 1)
    assert not jnp.isnan(out).any()
    assert (out == 0).all()


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "xgradcam", "scorecam"])
def test_constant_input_channel_weighted_maps_are_zero(model, name):
    # a zero image and zero first-layer biases give spatially constant, non-zero 'b2'
    # activations (its bias), so every channel-weighted map is constant; min-max must give
    # zeros, not NaN
    m0 = nnx.clone(model)
    m0.b1.conv.bias[...] = jnp.zeros_like(m0.b1.conv.bias[...])
    raw = _f(name)(m0, jnp.zeros((2, SIZE, SIZE, 3)), 1, relu=False, normalize=False)
    assert jnp.abs(raw).max() > 0
    out = _f(name)(m0, jnp.zeros((2, SIZE, SIZE, 3)), 1)
    assert not jnp.isnan(out).any()
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


@pytest.mark.slow
def test_param_gradients_agree_for_nnx_and_linen(model, x):
    """jax.grad w.r.t. the model itself: an NNX module and a jaxlrp.linen model are pytrees,
    and the same parameters give the same gradients."""
    gn = jax.grad(lambda m: cam.gradcam(m, x, TARGETS).sum())(model)
    gl = jax.grad(lambda m: cam.gradcam(m, x, TARGETS).sum())(_linen_twin(model))
    assert isinstance(gn, Net) and isinstance(gl, jaxlrp.LinenModel)
    assert jnp.abs(gn.b1.conv.kernel[...]).max() > 0
    for a, b in [(gl.variables["params"]["b1"]["conv"]["kernel"], gn.b1.conv.kernel[...]),
                 (gl.variables["params"]["head"]["kernel"], gn.head.kernel[...])]:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))


def test_layer_list_cache_keeps_errors(model, x):
    cam.gradcam(model, x, 0)  # fills the shape cache for this model and input shape
    with pytest.raises(ExplanationError, match="no submodule 'nope'"):
        cam.gradcam(model, x, 0, "nope")
    with pytest.raises(ExplanationError, match="out of range"):
        cam.gradcam(model, x, CLASSES + 1)
