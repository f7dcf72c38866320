"""jaxlrp's AttnLRP and CP-LRP against LXT 2.1 on a torchvision ViT and its NNX twin.

The torch side is torchvision's ``VisionTransformer`` at a tiny size (8x8 images, 4x4
patches, 2 blocks, 2 heads, width 8), every parameter random (torchvision zero-inits the
head and the class token). LXT's "efficient" mode patches module classes and reads the
relevance as gradient x input:

* CP-LRP: LXT's own map for torchvision ViTs (``lxt.efficient.models.vit_torch.cp_LRP``):
  identity rule on GELU, LayerNorm with ``stop_gradient(std)``, queries and keys
  detached at ``nn.MultiheadAttention``.
* AttnLRP: LXT ships no torchvision-ViT map, so the test builds one from LXT's own
  pieces, as LXT's Hugging Face patches do: GELU and LayerNorm as above, and
  ``divide_gradient`` by 4 on queries and keys and by 2 on values at the attention
  input (the uniform rule on ``Q K^T`` and ``A V``; the softmax keeps its plain
  gradient, which is the deep-Taylor rule ``x (R - y sum R)``).

The JAX twin is an NNX ViT with ``nnx.MultiHeadAttention`` and the same weights;
jaxlrp sees only its jaxpr. ``epsilon=0`` (LXT's efficient mode has no stabiliser).

Bound: max|R_jax - R_lxt| / max|R_lxt| <= 1e-5 per example, float64. Measured (printed
by the tests, 4 inputs x 2 targets): AttnLRP 1.6e-7, CP-LRP 1.3e-7. The residue has two
sources, each measured by removing it once (not part of the tests):
``jax.nn.dot_product_attention``, which ``nnx.MultiHeadAttention`` calls by default,
computes the softmax in float32 even for float64 inputs (with a float64 attention
function: 1.5e-8 and 1.6e-8), and LXT's identity rule divides by ``x + 1e-10`` (with
that set to 0 as well: 1.0e-15 and 1.3e-15).

Where LXT's choices differ from jaxlrp's defaults (tested below):
* the position-embedding add: LXT differentiates it (LRP-0, the embedding keeps its
  share); jaxlrp's ``attn_lrp``/``cp_lrp`` presets do the same with
  ``IdentityOrEpsilon``, but the default ``Pass`` (and the ``epsilon`` preset) pass the
  relevance through unchanged;
* the stabiliser: LXT efficient has none, jaxlrp's presets default to epsilon=1e-6;
* the softmax: AttnLRP's rule does not conserve; jaxlrp's ``epsilon`` preset uses the
  conservative identity on softmax instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from lxt.efficient import monkey_patch
from lxt.efficient.models.vit_torch import cp_LRP
from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
from lxt.efficient.rules import divide_gradient
from torch import nn
from torchvision.models import vision_transformer as tv_vit

from jaxlrp._lrp import composites, lrp
from jaxlrp._lrp import rules as R

pytestmark = pytest.mark.crosscheck

IMAGE, PATCH, LAYERS, HEADS, WIDTH, MLP, K = 8, 4, 2, 2, 8, 16, 3
BOUND = 1e-5


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


# ----------------------------------------------------------------------------- torch side


def torch_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = tv_vit.VisionTransformer(image_size=IMAGE, patch_size=PATCH, num_layers=LAYERS,
                                 num_heads=HEADS, hidden_dim=WIDTH, mlp_dim=MLP, num_classes=K)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith(
                    "ln.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.4 * torch.randn_like(p))
    return m.double().eval()


def attn_mha_forward(self, query, key, value, *args, **kwargs):
    """AttnLRP's uniform rule on Q K^T (1/2) and A V (1/2), as LXT's HF attention patch."""
    return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4),
                                 divide_gradient(value, 2), *args, **kwargs)


ATTN_LRP = {
    nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
    nn.LayerNorm: partial(patch_method, layer_norm_forward),
    nn.MultiheadAttention: partial(patch_method, attn_mha_forward, keep_original=True),
}


@contextlib.contextmanager
def lxt_patched(patch_map):
    """Apply an LXT patch map to torch.nn classes, and undo it afterwards."""
    saved = {cls: dict(cls.__dict__) for cls in patch_map}
    monkey_patch(tv_vit, patch_map=patch_map)
    try:
        yield
    finally:
        for cls, d in saved.items():
            for attr in ("forward", "original_forward"):
                if attr in d:
                    setattr(cls, attr, d[attr])
                elif attr in cls.__dict__:
                    delattr(cls, attr)


def lxt_relevance(model: nn.Module, x: np.ndarray, target: int, patch_map) -> np.ndarray:
    """(B, H, W, C) gradient x input of the target logit under an LXT patch map."""
    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    with lxt_patched(patch_map):
        y = model(xt)
        y[:, target].sum().backward()
    return (xt * xt.grad).detach().numpy().transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- JAX twin


class Block(nnx.Module):
    def __init__(self, r):
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=r)
        self.ln_1 = nnx.LayerNorm(WIDTH, epsilon=1e-6, **kw)
        self.attn = nnx.MultiHeadAttention(HEADS, WIDTH, decode=False, **kw)
        self.ln_2 = nnx.LayerNorm(WIDTH, epsilon=1e-6, **kw)
        self.fc1 = nnx.Linear(WIDTH, MLP, **kw)
        self.fc2 = nnx.Linear(MLP, WIDTH, **kw)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln_2(x)), approximate=False))


class JaxViT(nnx.Module):
    def __init__(self):
        r = nnx.Rngs(0)
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=r)
        n = (IMAGE // PATCH) ** 2 + 1
        self.conv_proj = nnx.Conv(3, WIDTH, (PATCH, PATCH), strides=(PATCH, PATCH),
                                  padding="VALID", **kw)
        self.class_token = nnx.Param(jnp.zeros((1, 1, WIDTH)))
        self.pos_embedding = nnx.Param(jnp.zeros((1, n, WIDTH)))
        self.layers = nnx.List([Block(r) for _ in range(LAYERS)])
        self.ln = nnx.LayerNorm(WIDTH, epsilon=1e-6, **kw)
        self.head = nnx.Linear(WIDTH, K, **kw)

    def __call__(self, x):
        t = self.conv_proj(x)
        b = t.shape[0]
        t = t.reshape(b, -1, WIDTH)
        cls = jnp.broadcast_to(self.class_token[...], (b, 1, WIDTH))
        t = jnp.concatenate([cls, t], axis=1) + self.pos_embedding[...]
        for blk in self.layers:
            t = blk(t)
        return self.head(self.ln(t)[:, 0])


def jax_twin(tm: nn.Module) -> JaxViT:
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    m = JaxViT()

    def put(param, value):
        param.value = jnp.asarray(value, jnp.float64)

    put(m.conv_proj.kernel, sd["conv_proj.weight"].transpose(2, 3, 1, 0))
    put(m.conv_proj.bias, sd["conv_proj.bias"])
    put(m.class_token, sd["class_token"])
    put(m.pos_embedding, sd["encoder.pos_embedding"])
    dh = WIDTH // HEADS
    for i, blk in enumerate(m.layers):
        p = f"encoder.layers.encoder_layer_{i}."
        for ln in ("ln_1", "ln_2"):
            put(getattr(blk, ln).scale, sd[p + ln + ".weight"])
            put(getattr(blk, ln).bias, sd[p + ln + ".bias"])
        w, bias = sd[p + "self_attention.in_proj_weight"], sd[p + "self_attention.in_proj_bias"]
        for j, name in enumerate(("query", "key", "value")):
            lin = getattr(blk.attn, name)
            put(lin.kernel, w[j * WIDTH:(j + 1) * WIDTH].T.reshape(WIDTH, HEADS, dh))
            put(lin.bias, bias[j * WIDTH:(j + 1) * WIDTH].reshape(HEADS, dh))
        put(blk.attn.out.kernel, sd[p + "self_attention.out_proj.weight"].T.reshape(
            HEADS, dh, WIDTH))
        put(blk.attn.out.bias, sd[p + "self_attention.out_proj.bias"])
        put(blk.fc1.kernel, sd[p + "mlp.0.weight"].T)
        put(blk.fc1.bias, sd[p + "mlp.0.bias"])
        put(blk.fc2.kernel, sd[p + "mlp.3.weight"].T)
        put(blk.fc2.bias, sd[p + "mlp.3.bias"])
    put(m.ln.scale, sd["encoder.ln.weight"])
    put(m.ln.bias, sd["encoder.ln.bias"])
    put(m.head.kernel, sd["heads.head.weight"].T)
    put(m.head.bias, sd["heads.head.bias"])
    return m


def images(seed: int = 3, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, IMAGE, IMAGE, 3))


def rel_err(got, want) -> float:
    """Largest per-example max|got - want| / max|want|."""
    got, want = np.asarray(got), np.asarray(want)
    return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want,
                                                                             strict=True))


# ----------------------------------------------------------------------------- tests


def test_twin_has_the_same_logits():
    tm = torch_vit()
    jm = jax_twin(tm)
    x = images()
    with torch.no_grad():
        want = tm(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(jm(jnp.asarray(x))), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset", ["attn_lrp", "cp_lrp"])
def test_relevance_matches_lxt(preset):
    """AttnLRP and CP-LRP input relevance equal LXT's to <= 1e-5 relative (float64)."""
    tm = torch_vit()
    jm = jax_twin(tm)
    x = images()
    patch_map = ATTN_LRP if preset == "attn_lrp" else cp_LRP
    comp = composites.attn_lrp(0.0) if preset == "attn_lrp" else composites.cp_lrp(0.0)
    worst = 0.0
    for t in (0, 2):
        want = lxt_relevance(tm, x, t, patch_map)
        got = lrp(jm, jnp.asarray(x), t, composite=comp)
        worst = max(worst, rel_err(got, want))
    print(f"{preset}: max relative difference to LXT 2.1 = {worst:.2e}")
    assert worst <= BOUND
    # and the patches were undone: plain torch gradient again
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tm(xt)[:, 0].sum().backward()
    assert nn.GELU.forward is not non_linear_forward


def test_the_two_presets_differ_and_so_do_lxt_maps():
    """The comparison can fail: AttnLRP and CP-LRP give different maps on both sides."""
    tm = torch_vit()
    jm = jax_twin(tm)
    x = images(n=2)
    a = lxt_relevance(tm, x, 1, ATTN_LRP)
    c = lxt_relevance(tm, x, 1, cp_LRP)
    assert rel_err(a, c) > 1e-2
    ja = lrp(jm, jnp.asarray(x), 1, composite=composites.attn_lrp(0.0))
    assert rel_err(ja, c) > 1e-2


def test_documented_differences_from_lxt():
    """Where jaxlrp's defaults differ from LXT's choices, the maps differ measurably, and
    switching the one rule closes the gap."""
    tm = torch_vit()
    jm = jax_twin(tm)
    x = images(n=2)
    want = lxt_relevance(tm, x, 0, ATTN_LRP)
    # 1. the position embedding: Pass (identity) instead of LXT's gradient (LRP-0)
    passing = dataclasses.replace(composites.attn_lrp(0.0), activation=R.Pass())
    assert rel_err(lrp(jm, jnp.asarray(x), 0, composite=passing), want) > 1e-3
    # 2. the default stabiliser eps = 1e-6 of the presets: a small, visible difference
    err = rel_err(lrp(jm, jnp.asarray(x), 0, composite="attn_lrp"), want)
    print(f"attn_lrp(epsilon=1e-6) vs LXT: {err:.2e}")
    assert 1e-12 < err
    # 3. the epsilon preset's conservative softmax instead of AttnLRP's
    eps = dataclasses.replace(composites.epsilon(0.0), activation=composites.ER.IdentityOrEpsilon())
    assert rel_err(lrp(jm, jnp.asarray(x), 0, composite=eps), want) > 1e-3
