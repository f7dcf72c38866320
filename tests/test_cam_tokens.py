"""CAMs on token models (ViTs): grid mapping of (B, N, D) layers, the default CAM layer
of a ViT, the ``tokens=`` override, clear errors, and the hybrid's CAM path."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxlrp
from jaxlrp import cam
from jaxlrp._cam_core import token_grid
from jaxlrp._hybrid import combine
from jaxlrp._tracing import as_adapter
from jaxlrp.errors import ExplanationError

SIZE, PATCH, D, K = 16, 4, 16, 3  # 4x4 patch grid


class Block(nnx.Module):
    """Pre-norm transformer block with nnx.MultiHeadAttention and a GELU MLP."""

    def __init__(self, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=D, decode=False,
                                           rngs=rngs)
        self.norm2 = nnx.LayerNorm(D, rngs=rngs)
        self.fc1 = nnx.Linear(D, 2 * D, rngs=rngs)
        self.fc2 = nnx.Linear(2 * D, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=False))


class ViT(nnx.Module):
    """Patch conv, ``extra`` leading tokens (class + registers), 2 blocks, final norm,
    head on the class token (``pool='cls'``) or on the mean of the patch tokens."""

    def __init__(self, rngs: nnx.Rngs, pool: str = "cls", extra: int = 1, depth: int = 2):
        self.patch = nnx.Conv(3, D, (PATCH, PATCH), strides=PATCH, padding="VALID",
                              rngs=rngs)
        n = (SIZE // PATCH) ** 2
        self.extra_tokens = nnx.Param(0.5 * jax.random.normal(rngs.params(), (1, extra, D)))
        self.pos = nnx.Param(0.1 * jax.random.normal(rngs.params(), (1, n + extra, D)))
        self.blocks = nnx.List([Block(rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.head = nnx.Linear(D, K, rngs=rngs)
        self.pool, self.extra = pool, extra

    def embed(self, x):
        p = self.patch(x)
        t = p.reshape(p.shape[0], -1, D)
        e = jnp.broadcast_to(self.extra_tokens[...], (t.shape[0], self.extra, D))
        return jnp.concatenate([e, t], axis=1) + self.pos[...]

    def __call__(self, x):
        t = self.embed(x)
        for b in self.blocks:
            t = b(t)
        t = self.norm(t)
        z = t[:, 0] if self.pool == "cls" else t[:, self.extra:].mean(axis=1)
        return self.head(z)


@functools.cache
def vit(pool: str = "cls", extra: int = 1) -> ViT:
    """A ViT with numpy-random parameters (no jax.random compilation): kernels and
    embeddings N(0, 1/fan_in), biases N(0, 0.1^2), norm scales U(0.5, 1.5)."""
    gdef, state = nnx.split(nnx.eval_shape(lambda: ViT(nnx.Rngs(0), pool=pool, extra=extra)))
    rng = np.random.default_rng(0)

    def fill(path, v):
        if "scale" in jax.tree_util.keystr(path):
            a = rng.uniform(0.5, 1.5, v.shape)
        elif len(v.shape) == 1:
            a = 0.1 * rng.standard_normal(v.shape)
        else:
            a = rng.standard_normal(v.shape) / np.sqrt(np.prod(v.shape[:-1]))
        return jnp.asarray(a, v.dtype)

    return nnx.merge(gdef, jax.tree_util.tree_map_with_path(fill, state))


def imgs(b: int = 2) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).uniform(0, 1, (b, SIZE, SIZE, 3)),
                       jnp.float32)


T = jnp.array([0, 2])


def _reference_gradcam(m: ViT, x, t, layer_index: int):
    """Independent Grad-CAM at ``blocks/<layer_index>``: the forward is split by hand at
    that block, the gradient taken with jax.vjp, and the class token dropped."""
    tokens = m.embed(x)
    for b in m.blocks[:layer_index + 1]:
        tokens = b(tokens)

    def rest(a):
        for b in m.blocks[layer_index + 1:]:
            a = b(a)
        a = m.norm(a)
        z = a[:, 0] if m.pool == "cls" else a[:, m.extra:].mean(axis=1)
        return jnp.take_along_axis(m.head(z), t[:, None], axis=1).sum()

    g = jax.grad(rest)(tokens)
    a = tokens[:, m.extra:].reshape(-1, 4, 4, D)
    g = g[:, m.extra:].reshape(-1, 4, 4, D)
    return jnp.einsum("bhwc,bc->bhw", a, g.mean(axis=(1, 2)))


# ----------------------------------------------------------------------------- the grid rule


@pytest.mark.parametrize("n,grid", [
    (16, (4, 4, 0)), (17, (4, 4, 1)), (18, (4, 4, 2)), (21, (4, 4, 5)), (197, (14, 14, 1)),
    (201, (14, 14, 5)), (4, (2, 2, 0)), (15, None), (1, None), (31, None), (30, (5, 5, 5)),
])
def test_token_grid_rule(n, grid):
    assert token_grid((2, n, 8)) == grid


def test_token_grid_override():
    assert token_grid((2, 17, 8), (4, 4)) == (4, 4, 1)
    assert token_grid((2, 17, 8), (4, 4, 0)) == (4, 4, 0)  # trailing token dropped
    assert token_grid((2, 15, 8), (3, 5)) == (3, 5, 0)
    assert token_grid((2, 4, 4, 8)) is None  # a spatial map is not a token layer
    with pytest.raises(ExplanationError, match="tokens"):
        token_grid((2, 17, 8), (5, 5))


# ----------------------------------------------------------------------------- default layer


@pytest.mark.slow
def test_default_layer_cls_vit_is_last_block_input():
    """Class-token pooling: the last block's patch tokens get zero gradient, so the
    default is the block before it (never the rank-4 attention 'value' projection)."""
    ad = as_adapter(vit())
    path, shape = cam.resolve_layer(ad, imgs(), None)
    assert path == "blocks/0" and shape == (2, 4, 4, D)
    # the rule's premise: at blocks/1 the Grad-CAM gradient is exactly zero
    raw = cam.gradcam(vit(), imgs(), T, "blocks/1", relu=False, normalize=False,
                      upsample=False)
    assert float(jnp.abs(raw).max()) == 0.0


def test_default_layer_mean_pool_vit_is_last_block():
    path, shape = cam.resolve_layer(as_adapter(vit("mean")), imgs(), None)
    assert path == "blocks/1" and shape == (2, 4, 4, D)


@pytest.mark.slow
def test_default_layer_with_registers():
    path, shape = cam.resolve_layer(as_adapter(vit("cls", 5)), imgs(), None)
    assert path == "blocks/0" and shape == (2, 4, 4, D)


# ----------------------------------------------------------------------------- CAM values


@pytest.mark.slow
@pytest.mark.parametrize("pool,index", [("cls", 0), ("mean", 1), ("mean", 0)])
def test_gradcam_on_tokens_matches_hand_split_reference(pool, index):
    m = vit(pool)
    raw = cam.gradcam(m, imgs(), T, f"blocks/{index}", relu=False, normalize=False,
                      upsample=False)
    ref = _reference_gradcam(m, imgs(), T, index)
    assert raw.shape == (2, 4, 4)
    assert float(jnp.abs(ref).max()) > 0
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-6 * float(jnp.abs(ref).max()))


@pytest.mark.slow
def test_tokens_override_equals_automatic_grid():
    m, x = vit(), imgs()
    kw = dict(relu=False, normalize=False, upsample=False)
    auto = cam.gradcam(m, x, T, **kw)
    np.testing.assert_array_equal(auto, cam.gradcam(m, x, T, tokens=(4, 4), **kw))
    np.testing.assert_array_equal(auto, cam.gradcam(m, x, T, tokens=(4, 4, 1), **kw))
    # a different grid (dropping the last token instead of the class token) differs
    other = cam.gradcam(m, x, T, tokens=(4, 4, 0), **kw)
    assert auto.shape == other.shape == (2, 4, 4)
    assert float(jnp.abs(auto - other).max()) > 1e-3


@pytest.mark.slow
def test_every_cam_runs_on_a_vit_under_jit():
    """All six CAMs in one jit (one compile), equal to the eager calls' maps."""
    m, x = vit(), imgs()
    names = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam"]

    def run(mm, xx):
        return [getattr(cam, n)(mm, xx, T, **({"chunk_size": 8} if n == "scorecam" else {}))
                for n in names]

    jitted = jax.jit(run)(m, x)
    for name, j in zip(names, jitted, strict=True):
        assert j.shape == (2, SIZE, SIZE) and bool(jnp.isfinite(j).all()), name
        assert 0.0 <= float(j.min()) and float(j.max()) <= 1.0 + 1e-6, name
        assert float(j.max()) > 0.99, name  # a normalised map, not the zero map
    np.testing.assert_allclose(cam.gradcam(m, x, T), jitted[0], atol=1e-5)


def test_default_layer_under_jit_is_the_eager_one():
    """With the model an argument of jax.jit (as the command line runs it) its
    parameters are traced; the token-influence probe then uses stand-in parameters of
    the same shapes and picks the same layer as an eager call, not the last block (whose
    patch tokens never reach the class token: an all-zero CAM)."""
    m, x = vit(), imgs()
    jaxlrp.clear_caches()
    seen = []

    def run(mm, xx):
        seen.append(cam.resolve_layer(as_adapter(mm), xx, None)[0])
        return cam.gradcam(mm, xx, T)

    jitted = jax.jit(run)(m, x)
    assert seen == ["blocks/0"]
    assert float(jitted.max()) == pytest.approx(1.0)
    jaxlrp.clear_caches()
    np.testing.assert_allclose(cam.gradcam(m, x, T), jitted, atol=1e-5)


@pytest.mark.slow
def test_activations_and_gradients_on_grid():
    ad, x = as_adapter(vit()), imgs()
    a, g, logits = cam.activations_and_gradients(ad, ad.params, x, T, "blocks/0")
    assert a.shape == g.shape == (2, 4, 4, D) and logits.shape == (2, K)


class NonSquare(nnx.Module):
    """A token model with a 3x5 patch grid and no extra token: N = 15 has no square grid."""

    def __init__(self, rngs: nnx.Rngs):
        self.patch = nnx.Conv(3, D, (4, 4), strides=4, padding="VALID", rngs=rngs)
        self.mix = nnx.Linear(D, D, rngs=rngs)
        self.head = nnx.Linear(D, K, rngs=rngs)

    def __call__(self, x):
        p = self.patch(x)
        t = self.mix(p.reshape(p.shape[0], -1, D))
        return self.head(nnx.relu(t).mean(axis=1))


@pytest.mark.slow
def test_unmappable_token_layer_error_names_shape_and_override_works():
    m = NonSquare(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, 12, 20, 3)), jnp.float32)
    with pytest.raises(ExplanationError, match=r"\(2, 15, 16\)"):
        cam.gradcam(m, x, 0, "mix")
    out = cam.gradcam(m, x, 0, "mix", tokens=(3, 5), upsample=False)
    assert out.shape == (2, 3, 5) and bool(jnp.isfinite(out).all())


# ----------------------------------------------------------------------------- hybrid


@pytest.mark.slow
def test_hybrid_cam_path_and_combine_on_a_vit():
    """The hybrid's CAM step (its registered CAM map on the grid view, then postprocess) equals
    cam.gradcam on a ViT, and ``combine`` makes a valid hybrid map from it.
    (The hybrid's LRP part on attention needs the attention rules of another branch.)"""
    m, x = vit(), imgs()
    ad = as_adapter(m)
    layer, _ = cam.resolve_layer(ad, x, None)
    seen = []

    def hook(path, module, out):
        if path == layer:
            seen.append(out)
        return out

    ad.apply(ad.params, x, hook=hook)
    assert seen[0].shape == (2, 17, D)  # the raw token output the LRP engine hands over
    a, g, _ = cam.activations_and_gradients(ad, ad.params, x, T, layer)
    cam_map = cam.postprocess(cam.CAMS.get("gradcam").map(a, g), x.shape[1:3], relu=True,
                              upsample=True, normalize=True)
    np.testing.assert_allclose(cam_map, cam.gradcam(m, x, T), atol=1e-6)
    assert float(cam_map.max()) == pytest.approx(1.0)
    rel = jax.grad(lambda xx: ad.apply(ad.params, xx)[jnp.arange(2), T].sum())(x) * x
    h = combine(cam_map, rel)
    assert h.shape == (2, SIZE, SIZE)
    assert float(h.min()) >= 0.0 and float(h.max()) == pytest.approx(1.0)


def test_hybrid_validates_tokens_before_tracing():
    with pytest.raises(ExplanationError, match="tokens"):
        jaxlrp.hybrid(vit(), imgs(), tokens=(5, 5))


# ----------------------------------------------------------------------------- Linen ViT


class LBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(
            nn.LayerNorm(name="norm1")(x))
        h = nn.gelu(nn.Dense(2 * D, name="fc1")(nn.LayerNorm(name="norm2")(x)))
        return x + nn.Dense(D, name="fc2")(h)


class LViT(nn.Module):
    """Linen ViT (flax examples style): class token, 2 blocks, final norm, softmax head."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        p = nn.Conv(D, (PATCH, PATCH), strides=PATCH, padding="VALID", name="patch")(x)
        t = p.reshape(p.shape[0], -1, D)
        c = self.param("cls", nn.initializers.normal(0.5), (1, 1, D))
        t = jnp.concatenate([jnp.broadcast_to(c, (t.shape[0], 1, D)), t], axis=1)
        for i in range(2):
            t = nn.Dropout(0.1, deterministic=not train)(LBlock(name=f"block_{i}")(t))
        t = nn.LayerNorm(name="norm")(t)
        return nn.softmax(nn.Dense(K, name="head")(t[:, 0]))


@pytest.mark.slow
def test_linen_vit_default_layer_and_cam():
    """Linen paths, a train flag and a softmax head: the same default rule and a CAM equal
    to the one without the softmax (the logits are explained)."""
    x = imgs()
    v = LViT().init(jax.random.key(0), x, train=False)
    path, shape = cam.resolve_layer(as_adapter((LViT(), v)), x, None)
    assert path == "block_0" and shape == (2, 4, 4, D)
    ours = cam.gradcam((LViT(), v), x, T, relu=False, normalize=False, upsample=False)
    keep = jaxlrp.model((LViT(), v), softmax="keep")
    probs = cam.gradcam(keep, x, T, relu=False, normalize=False, upsample=False)
    assert ours.shape == probs.shape == (2, 4, 4)
    assert float(jnp.abs(ours - probs).max()) > 1e-3 * float(jnp.abs(ours).max())
