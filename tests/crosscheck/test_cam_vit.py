"""jaxlrp.cam on a ViT against pytorch-grad-cam 1.5.7 with its ``reshape_transform``.

A tiny ViT (4x4 patches of 16x16 images: 16 patch tokens + a class token, 3 pre-norm
blocks with 2-head attention and a GELU MLP, a final LayerNorm) in NNX and its torch twin
with the same weights. pytorch-grad-cam sees the token layers through the
``reshape_transform`` of its ViT tutorial (drop the class token, reshape to (B, D, 4, 4));
jaxlrp maps the (B, 17, D) outputs to their grid by itself.

Layers compared, Grad-CAM and Grad-CAM++ each:

* the tutorial's layer ``blocks[-1].norm1`` (class-token pooling);
* jaxlrp's default layer of the class-token ViT, the last block's input
  (``blocks/1``: the last block's patch tokens get exactly zero gradient there);
* the last block's output ``blocks/2`` (= the default) on the mean-pooled twin.

Bounds (float32 on both sides, as in test_cam_peers.py): raw layer-resolution maps
max|diff| <= 1e-5 * max|ref|; final maps (ReLU, min-max, bilinear resize, min-max)
max|diff| <= 1e-4. Measured (jax 0.10.2 / torch 2.14.1 CPU, 6 layer x method cases):
raw max|diff|/max|ref| 3.0e-7 .. 8.7e-7, final max|diff| 7.2e-7 .. 3.2e-6 (the figures
print with ``-s``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from jaxlrp import cam
from jaxlrp._tracing import as_adapter

pytestmark = pytest.mark.crosscheck

torch.set_num_threads(1)

RAW_RTOL = 1e-5
FINAL_ATOL = 1e-4
SIZE, PATCH, D, HEADS, DEPTH, K = 16, 4, 16, 2, 3, 5
GRID = SIZE // PATCH


# ----------------------------------------------------------------------------- NNX ViT


class JAttention(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.qkv = nnx.Linear(D, 3 * D, rngs=rngs)
        self.proj = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, D // HEADS)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        a = jnp.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(D // HEADS)
        a = jax.nn.softmax(a, axis=-1)
        return self.proj(jnp.einsum("bhnm,bmhd->bnhd", a, v).reshape(b, n, D))


class JBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(D, epsilon=1e-6, rngs=rngs)
        self.attn = JAttention(rngs)
        self.norm2 = nnx.LayerNorm(D, epsilon=1e-6, rngs=rngs)
        self.fc1 = nnx.Linear(D, 2 * D, rngs=rngs)
        self.fc2 = nnx.Linear(2 * D, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class JViT(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, pool: str = "cls"):
        self.patch = nnx.Conv(3, D, (PATCH, PATCH), strides=PATCH, padding="VALID",
                              rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, D)))
        self.pos = nnx.Param(jnp.zeros((1, GRID * GRID + 1, D)))
        self.blocks = nnx.List([JBlock(rngs) for _ in range(DEPTH)])
        self.norm = nnx.LayerNorm(D, epsilon=1e-6, rngs=rngs)
        self.head = nnx.Linear(D, K, rngs=rngs)
        self.pool = pool

    def __call__(self, x):
        p = self.patch(x)
        t = p.reshape(p.shape[0], -1, D)
        c = jnp.broadcast_to(self.cls_token[...], (t.shape[0], 1, D))
        t = jnp.concatenate([c, t], axis=1) + self.pos[...]
        for b in self.blocks:
            t = b(t)
        t = self.norm(t)
        return self.head(t[:, 0] if self.pool == "cls" else t[:, 1:].mean(axis=1))


def random_vit(pool: str, seed: int) -> JViT:
    """Numpy-random state: kernels and embeddings N(0, 1/fan_in), biases N(0, 0.1^2),
    LayerNorm scales U(0.5, 1.5)."""
    gdef, state = nnx.split(nnx.eval_shape(lambda: JViT(nnx.Rngs(0), pool)))
    rng = np.random.default_rng(seed)

    def fill(path, v):
        if "scale" in jax.tree_util.keystr(path):
            a = rng.uniform(0.5, 1.5, v.shape)
        elif len(v.shape) == 1:
            a = 0.1 * rng.standard_normal(v.shape)
        else:
            a = rng.standard_normal(v.shape) / np.sqrt(np.prod(v.shape[:-1]))
        return jnp.asarray(a, v.dtype)

    return nnx.merge(gdef, jax.tree_util.tree_map_with_path(fill, state))


# ----------------------------------------------------------------------------- torch twin


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def _linear(j: nnx.Linear) -> torch.nn.Linear:
    t = torch.nn.Linear(*j.kernel.shape)
    with torch.no_grad():
        t.weight.copy_(_t(j.kernel[...]).T)
        t.bias.copy_(_t(j.bias[...]))
    return t


def _norm(j: nnx.LayerNorm) -> torch.nn.LayerNorm:
    t = torch.nn.LayerNorm(D, eps=1e-6)
    with torch.no_grad():
        t.weight.copy_(_t(j.scale[...]))
        t.bias.copy_(_t(j.bias[...]))
    return t


class TAttention(torch.nn.Module):
    def __init__(self, j: JAttention):
        super().__init__()
        self.qkv, self.proj = _linear(j.qkv), _linear(j.proj)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        a = torch.softmax(q @ k.transpose(-2, -1) / np.sqrt(D // HEADS), dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, D))


class TBlock(torch.nn.Module):
    def __init__(self, j: JBlock):
        super().__init__()
        self.norm1, self.attn, self.norm2 = _norm(j.norm1), TAttention(j.attn), _norm(j.norm2)
        self.fc1, self.fc2 = _linear(j.fc1), _linear(j.fc2)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TViT(torch.nn.Module):
    def __init__(self, j: JViT):
        super().__init__()
        k = np.asarray(j.patch.kernel[...])
        self.patch = torch.nn.Conv2d(3, D, PATCH, stride=PATCH)
        with torch.no_grad():
            self.patch.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
            self.patch.bias.copy_(_t(j.patch.bias[...]))
        self.cls_token = torch.nn.Parameter(_t(j.cls_token[...]))
        self.pos = torch.nn.Parameter(_t(j.pos[...]))
        self.blocks = torch.nn.ModuleList([TBlock(b) for b in j.blocks])
        self.norm, self.head, self.pool = _norm(j.norm), _linear(j.head), j.pool

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, D), row-major grid
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for b in self.blocks:
            t = b(t)
        t = self.norm(t)
        return self.head(t[:, 0] if self.pool == "cls" else t[:, 1:].mean(dim=1))


def reshape_transform(tensor, height=GRID, width=GRID):
    """pytorch-grad-cam's ViT tutorial: drop the class token, (B, D, h, w)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


# ----------------------------------------------------------------------------- comparison


@pytest.fixture(scope="module", params=["cls", "mean"])
def twins(request):
    j = random_vit(request.param, seed=3 if request.param == "cls" else 4)
    t = TViT(j).eval()
    x = np.random.default_rng(1).random((3, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        lt = t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(np.asarray(j(jnp.asarray(x))), lt, rtol=1e-5, atol=1e-5)
    return request.param, j, t, x, np.array([0, 3, 4])


PEERS = {"gradcam": GradCAM, "gradcam_pp": GradCAMPlusPlus}


def _peer(method, tmodel, layer, x, targets):
    """(raw layer-resolution cam, final map) from pytorch-grad-cam with reshape_transform."""
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tg = [ClassifierOutputTarget(int(c)) for c in targets]
    obj = PEERS[method](model=tmodel, target_layers=[layer],
                        reshape_transform=reshape_transform)
    final = obj(input_tensor=xt, targets=tg)
    acts = obj.activations_and_grads.activations[0].numpy()
    grads = obj.activations_and_grads.gradients[0].numpy()
    raw = obj.get_cam_image(xt, layer, tg, acts, grads, False)
    obj.activations_and_grads.release()
    return np.asarray(raw), np.asarray(final)


def _cases(pool, t):
    if pool == "cls":
        return [("blocks/2/norm1", t.blocks[-1].norm1), (None, t.blocks[1])]
    return [(None, t.blocks[-1])]


@pytest.mark.parametrize("method", sorted(PEERS))
def test_vit_cams_match_pytorch_grad_cam(twins, method):
    pool, j, t, x, targets = twins
    default = cam.resolve_layer(as_adapter(j), jnp.asarray(x), None)[0]
    assert default == ("blocks/1" if pool == "cls" else "blocks/2")
    f = getattr(cam, method)
    for layer, tlayer in _cases(pool, t):
        raw_ref, final_ref = _peer(method, t, tlayer, x, targets)
        raw = np.asarray(f(j, x, targets, layer, relu=False, normalize=False, upsample=False))
        final = np.asarray(f(j, x, targets, layer))
        assert raw.shape == raw_ref.shape == (3, GRID, GRID)
        assert final.shape == final_ref.shape == (3, SIZE, SIZE)
        scale = float(np.abs(raw_ref).max())
        assert scale > 0 and float(final_ref.max()) > 0.5  # non-degenerate maps
        r = float(np.abs(raw - raw_ref).max()) / scale
        a = float(np.abs(final - final_ref).max())
        print(f"[cam-vit] {pool}/{layer or default}/{method}: raw max|diff|/max|ref| = "
              f"{r:.2e}, final max|diff| = {a:.2e}")
        assert r <= RAW_RTOL and a <= FINAL_ATOL, (layer, r, a)


def test_last_block_patch_tokens_have_zero_gradient_with_class_token_pooling(twins):
    """Why the class-token ViT's default is the last block's *input*: pytorch-grad-cam's
    own gradients at the last block's output are exactly zero on the patch tokens."""
    pool, j, t, x, targets = twins
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    obj = GradCAM(model=t, target_layers=[t.blocks[-1]], reshape_transform=reshape_transform)
    obj(input_tensor=xt, targets=[ClassifierOutputTarget(int(c)) for c in targets])
    g = obj.activations_and_grads.gradients[0].numpy()
    obj.activations_and_grads.release()
    assert (np.abs(g).max() == 0.0) == (pool == "cls")
