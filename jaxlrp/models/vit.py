"""A small Vision Transformer in Flax NNX (:class:`ViT`) and Linen (:class:`ViTLinen`).

Both share one parameter layout (the checkpoint's), so the same weights load into either::

    stem_convs/i             (optional, ``stem_channels=(c0, c1, ...)``) conv 3x3
                             stride 2 SAME -> GELU, one per entry (k entries):
                             (B, H, W, C) -> (B, H / 2^k, W / 2^k, c_last)
    patch_embed              conv q x q, stride q, VALID -> (B, h, w, D), q = p / 2^k
                             (the plain ViT's patch conv when there is no stem)
    cls_token                (1, 1, D)   prepended to the h*w patch tokens
    pos_embed                (1, 1 + h*w, D)  learned, added
    blocks/i                 pre-norm block, output (B, 1 + h*w, D):
      norm1, attn              x + MultiHeadAttention(LayerNorm(x))
                               (attn/query, attn/key, attn/value, attn/out)
      norm2, mlp/fc1, mlp/fc2  x + fc2(GELU(fc1(LayerNorm(x))))
    norm                     final LayerNorm
    head                     Dense on the class token -> (B, K) logits

The last block's call (``blocks/{depth-1}``) returns the token sequence
(B, 1 + h*w, D): token 0 is the class token, tokens 1: are the h x w patch grid in
row-major order. GELU is the exact (erf) form; no dropout. The convolutional stem
(Xiao et al., "Early convolutions help transformers see better", NeurIPS 2021) replaces
the single p x p patch conv by a few stride-2 3x3 convolutions; the token grid is the
same (H / p, W / p). :data:`CONFIG` has one. On the embedded dataset a plain 8x8 patch
conv (dim 32) reached 52% in 24 epochs and the two-conv stem (dim 64) from random
initialisation 72% in 34 (``benchmarks/results/reference_models.json``, keys
``vit_plain_patch`` and ``vit_stem2_stopped``). :data:`RECIPE` therefore starts the stem
from the shipped reference ConvNeXt's trained stem (the same two convolutions); the rest
of the ViT is trained from scratch (key ``vit`` of the same file).

* :func:`vit_model` / :func:`vit_linen` load the shipped checkpoint
  ``jaxlrp/assets/reference_vit.msgpack`` (trained with :data:`RECIPE` by :func:`train_vit`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxlrp.errors import ExplanationError
from jaxlrp.models.reference import (
    ASSETS,
    apply_conv_stem,
    check_conv_stem,
    conv_stem,
    conv_stem_linen,
    copy_conv_stem,
    load_reference,
    to_linen,
    train_reference,
)
from jaxlrp.models.vgg import Indexed, _pair, check_model_input, scaled_normal

PATH = ASSETS / "reference_vit.msgpack"
LN_EPSILON = 1e-6

# The architecture of the shipped ViT (constructor kwargs of ViT / ViTLinen).
CONFIG: dict[str, Any] = {
    "num_classes": 8,
    "patch_size": 8,  # 64x64 input -> 8x8 = 64 patch tokens + 1 class token
    "stem_channels": (16, 32),  # 3x3 stride-2 convs: 64 -> 32 -> 16, then a 2x2 patch conv -> 8x8
    "dim": 64,
    "depth": 3,
    "num_heads": 4,
    "mlp_dim": 128,
    "in_channels": 3,
    "input_size": 64,
}

# The training recipe of the shipped ViT (see jaxlrp.models.reference.train_reference).
RECIPE: dict[str, Any] = {
    "train_examples": 12000,
    "batch_size": 64,
    "weight_decay": 0.05,
    "seed": 0,
    "augment": "flips+rot90",
    "stem_init": "convnext",  # the conv stem starts from the shipped ConvNeXt's trained stem
    "phases": ((30, 1e-3), (10, 5e-4)),
}

_w_init = scaled_normal(1.0)  # LeCun normal
_embed_init = nn.initializers.normal(0.02)
_zeros = nn.initializers.zeros


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _check_config(cfg: dict) -> None:
    for key in ("num_classes", "patch_size", "dim", "depth", "num_heads", "mlp_dim",
                "in_channels"):
        if int(cfg[key]) <= 0:
            raise ExplanationError(f"{key}: expected a positive int, got {cfg[key]}")
    if cfg["dim"] % cfg["num_heads"]:
        raise ExplanationError(
            f"num_heads: expected a divisor of dim={cfg['dim']}, got {cfg['num_heads']}"
        )
    check_conv_stem(cfg.get("stem_channels", ()), cfg["patch_size"], "patch_size")
    h, w = _pair(cfg["input_size"])
    p = cfg["patch_size"]
    if h % p or w % p:
        raise ExplanationError(
            f"input_size: expected a multiple of patch_size={p}, got {(h, w)}"
        )


def _config(obj: Any) -> dict:
    return {
        "num_classes": int(obj.num_classes),
        "patch_size": int(obj.patch_size),
        "stem_channels": [int(c) for c in obj.stem_channels],
        "dim": int(obj.dim),
        "depth": int(obj.depth),
        "num_heads": int(obj.num_heads),
        "mlp_dim": int(obj.mlp_dim),
        "in_channels": int(obj.in_channels),
        "input_size": list(_pair(obj.input_size)),
    }


# ----------------------------------------------------------------------------- NNX


class Mlp(nnx.Module):
    """fc1 -> GELU -> fc2. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(dim, hidden, kernel_init=_w_init, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, kernel_init=_w_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(_gelu(self.fc1(x)))


class Block(nnx.Module):
    """Pre-norm transformer block. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads, in_features=dim, qkv_features=dim, out_features=dim,
            kernel_init=_w_init, decode=False, deterministic=True, rngs=rngs,
        )
        self.norm2 = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)
        self.mlp = Mlp(dim, mlp_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
    """Vision Transformer classifier. (B, H, W, in_channels) float -> (B, num_classes) logits.

    Args:
      num_classes: number of logits K.
      patch_size: patch side p; the token grid is (H / p, W / p).
      stem_channels: channels of the 3x3 stride-2 GELU convolutions before the patch conv (empty:
        the plain ViT's single p x p patch conv).
      dim: token width D.
      depth: number of transformer blocks.
      num_heads: attention heads (a divisor of ``dim``).
      mlp_dim: hidden width of each block's MLP.
      in_channels: input channels C.
      input_size: input (H, W) (an int for square images); fixes the position embedding.
    """

    def __init__(self, num_classes: int = 8, patch_size: int = 8, dim: int = 64,
                 depth: int = 4, num_heads: int = 4, mlp_dim: int = 128,
                 in_channels: int = 3, input_size: int | Sequence[int] = 64,
                 stem_channels: Sequence[int] = (), *, rngs: nnx.Rngs):
        self.num_classes, self.patch_size, self.dim = int(num_classes), int(patch_size), int(dim)
        self.stem_channels = tuple(int(c) for c in stem_channels)
        self.depth, self.num_heads, self.mlp_dim = int(depth), int(num_heads), int(mlp_dim)
        self.in_channels, self.input_size = int(in_channels), _pair(input_size)
        _check_config(self.config())
        p, d = self.patch_size, self.dim
        n = (self.input_size[0] // p) * (self.input_size[1] // p)
        self.stem_convs = conv_stem(self.in_channels, self.stem_channels, _w_init, rngs)
        q = p // 2 ** len(self.stem_channels)
        stem_out = self.stem_channels[-1] if self.stem_channels else self.in_channels
        self.patch_embed = nnx.Conv(stem_out, d, (q, q), strides=(q, q),
                                    padding="VALID", kernel_init=_w_init, rngs=rngs)
        self.cls_token = nnx.Param(_zeros(rngs.params(), (1, 1, d)))
        self.pos_embed = nnx.Param(_embed_init(rngs.params(), (1, 1 + n, d)))
        self.blocks = nnx.List(
            [Block(d, self.num_heads, self.mlp_dim, rngs=rngs) for _ in range(self.depth)]
        )
        self.norm = nnx.LayerNorm(d, epsilon=LN_EPSILON, rngs=rngs)
        self.head = nnx.Linear(d, self.num_classes, kernel_init=_zeros, rngs=rngs)

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible) that rebuild this architecture."""
        return _config(self)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_model_input(x, self.in_channels, self.input_size, "ViT")
        x = self.patch_embed(apply_conv_stem(self.stem_convs, len(self.stem_channels), x))
        b, h, w, d = x.shape
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d)).astype(x.dtype)
        x = jnp.concatenate([cls, x.reshape(b, h * w, d)], axis=1) + self.pos_embed[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


# ----------------------------------------------------------------------------- Linen


class MlpLinen(nn.Module):
    """Linen twin of :class:`Mlp` (``fc1``, ``fc2``)."""

    dim: int
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, kernel_init=_w_init, name="fc1")(x)
        return nn.Dense(self.dim, kernel_init=_w_init, name="fc2")(_gelu(x))


class BlockLinen(nn.Module):
    """Linen twin of :class:`Block` (``norm1``, ``attn``, ``norm2``, ``mlp``)."""

    dim: int
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=LN_EPSILON, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.dim, out_features=self.dim,
            kernel_init=_w_init, deterministic=True, name="attn",
        )(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=LN_EPSILON, name="norm2")(x)
        return x + MlpLinen(self.dim, self.mlp_dim, name="mlp")(y)


class ViTLinen(nn.Module):
    """Linen twin of :class:`ViT`: same fields, same parameter layout. ``apply(variables, x)``."""

    num_classes: int = 8
    patch_size: int = 8
    dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 128
    in_channels: int = 3
    input_size: int | Sequence[int] = 64
    stem_channels: Sequence[int] = ()

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible), as :meth:`ViT.config`."""
        return _config(self)

    def setup(self) -> None:
        _check_config(self.config())
        p, d = self.patch_size, self.dim
        h, w = _pair(self.input_size)
        n = (h // p) * (w // p)
        self.stem_convs = conv_stem_linen(self.stem_channels, _w_init)
        q = p // 2 ** len(tuple(self.stem_channels))
        self.patch_embed = nn.Conv(d, (q, q), strides=(q, q), padding="VALID",
                                   kernel_init=_w_init)
        self.cls_token = self.param("cls_token", _zeros, (1, 1, d))
        self.pos_embed = self.param("pos_embed", _embed_init, (1, 1 + n, d))
        heads, mlp = self.num_heads, self.mlp_dim
        self.blocks = Indexed(lambda i: BlockLinen(d, heads, mlp), self.depth)
        self.norm = nn.LayerNorm(epsilon=LN_EPSILON)
        self.head = nn.Dense(self.num_classes, kernel_init=_zeros)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_model_input(x, self.in_channels, _pair(self.input_size), "ViTLinen")
        x = self.patch_embed(apply_conv_stem(self.stem_convs, len(self.stem_channels), x))
        b, h, w, d = x.shape
        cls = jnp.broadcast_to(self.cls_token, (b, 1, d)).astype(x.dtype)
        x = jnp.concatenate([cls, x.reshape(b, h * w, d)], axis=1) + self.pos_embed
        for i in range(self.depth):
            x = self.blocks[i](x)
        return self.head(self.norm(x)[:, 0])


# ----------------------------------------------------------------------------- shipped model


def build_vit(seed: int = 0, **overrides: Any) -> ViT:
    """A freshly initialised :class:`ViT` with :data:`CONFIG` (``overrides`` replace keys)."""
    return ViT(**{**CONFIG, **overrides}, rngs=nnx.Rngs(seed))


def linen_module(model: ViT) -> ViTLinen:
    """The :class:`ViTLinen` with ``model``'s architecture."""
    cfg = model.config()
    return ViTLinen(**{**cfg, "input_size": tuple(cfg["input_size"]),
                       "stem_channels": tuple(cfg["stem_channels"])})


def train_vit(path: str | os.PathLike | None = None, **kwargs: Any) -> tuple[ViT, dict]:
    """Train the reference ViT with :data:`RECIPE` (kwargs: see ``train_reference``).

    With ``RECIPE["stem_init"] == "convnext"`` the convolutional stem starts from the
    shipped reference ConvNeXt's trained stem (same ``stem_channels``); everything else
    starts from :func:`build_vit`'s random initialisation.
    """
    return train_reference(_build_for_training, RECIPE, path, **kwargs)


def _build_for_training(seed: int) -> ViT:
    model = build_vit(seed)
    if RECIPE.get("stem_init") == "convnext":
        from jaxlrp.models.convnext import convnext_model

        copy_conv_stem(model, convnext_model())
    return model


def vit_model(path: str | os.PathLike | None = None) -> ViT:
    """The trained ViT at ``path`` (eval mode): (B, 64, 64, 3) in [0, 1] -> (B, 8) logits.

    ``path`` defaults to the shipped asset, written by
    ``benchmarks/train_reference_models.py vit``.
    """
    return load_reference(PATH if path is None else path, _template, "ViT")


def vit_linen(path: str | os.PathLike | None = None) -> Any:
    """The ViT at ``path`` as ``jaxlrp.linen(ViTLinen(...), variables)`` (same arrays)."""
    model = vit_model(path)
    return to_linen(model, linen_module(model))


def _template() -> ViT:
    return build_vit(0)
