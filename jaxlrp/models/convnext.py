"""A small ConvNeXt-style CNN in Flax NNX (:class:`ConvNeXt`) and Linen (:class:`ConvNeXtLinen`).

Both share one parameter layout (the checkpoint's), so the same weights load into either::

    stem_convs/i             (optional, ``stem_channels=(c0, c1, ...)``) conv 3x3 stride 2 SAME
                             -> GELU, one per entry (k entries)
    stem/conv, stem/norm     conv q x q, stride q (patchify, q = s / 2^k) -> LayerNorm
    downsample/i             (stage i >= 1) LayerNorm -> conv 2x2 stride 2
      norm, conv
    stages/i/j               ConvNeXt block, (B, H, W, C) -> (B, H, W, C):
      dwconv                   depthwise conv 7x7 SAME
      norm                     LayerNorm over channels (channels-last)
      pwconv1, pwconv2         Dense C -> 4C -> GELU -> Dense 4C -> C
      gamma                    layer scale (C,)
                               output: x + gamma * pwconv2(GELU(pwconv1(norm(dwconv(x)))))
    norm                     LayerNorm of the global pool (``pool="mean"``: average, the
                             usual ConvNeXt head; ``"max"``: maximum over positions)
    head                     Dense -> (B, K) logits

Each ``stages/i/j`` call outputs a spatial (B, H, W, C) map (a natural Grad-CAM layer).
GELU is the exact (erf) form; no stochastic depth. The optional convolutional stem
(as in the reference ViT, after Xiao et al., NeurIPS 2021) puts a few stride-2 3x3
convolutions before the patchify conv; the stage resolutions are unchanged. The shipped
ConvNeXt has one, a global max pool and layer scale 1.0: the smaller net with a plain 8x8
patchify stem, mean pool and layer scale 0.1 sat at chance on the embedded dataset for 12
of 16 epochs (ending at 21%), and for all 20 at a lower rate
(``benchmarks/results/reference_models.json``, key ``convnext_attempts``).

* :func:`convnext_model` / :func:`convnext_linen` load the shipped checkpoint
  ``jaxlrp/assets/reference_convnext.msgpack`` (trained with :data:`RECIPE` by
  :func:`train_convnext`).
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
    load_reference,
    to_linen,
    train_reference,
)
from jaxlrp.models.vgg import Indexed, _pair, check_model_input, scaled_normal

PATH = ASSETS / "reference_convnext.msgpack"
LN_EPSILON = 1e-6

# The architecture of the shipped ConvNeXt (constructor kwargs of ConvNeXt / ConvNeXtLinen).
CONFIG: dict[str, Any] = {
    "num_classes": 8,
    "widths": (48, 96),  # 64x64 input, stem 8 -> stages at 8x8 and 4x4
    "depths": (2, 2),
    "stem_size": 8,
    "stem_channels": (16, 32),  # 64 -> 32 -> 16, then a 2x2 patchify conv -> 8x8
    "layer_scale": 1.0,
    "in_channels": 3,
    "input_size": 64,
    "pool": "max",
}

# The training recipe of the shipped ConvNeXt (see jaxlrp.models.reference.train_reference).
RECIPE: dict[str, Any] = {
    "train_examples": 12000,
    "batch_size": 64,
    "weight_decay": 0.05,
    "seed": 0,
    "augment": "flips+rot90",
    "phases": ((30, 2e-3), (10, 1e-3)),
}

_w_init = scaled_normal(1.0)  # LeCun normal
_zeros = nn.initializers.zeros


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _global_pool(x: jax.Array, how: str) -> jax.Array:
    """(B, H, W, C) -> (B, C): mean or max over the positions."""
    return jnp.max(x, axis=(1, 2)) if how == "max" else jnp.mean(x, axis=(1, 2))


def _check_config(cfg: dict) -> None:
    for key in ("num_classes", "stem_size", "in_channels"):
        if int(cfg[key]) <= 0:
            raise ExplanationError(f"{key}: expected a positive int, got {cfg[key]}")
    if not cfg["widths"] or min(cfg["widths"]) <= 0:
        raise ExplanationError(f"widths: expected positive channel counts, got {cfg['widths']}")
    if len(cfg["depths"]) != len(cfg["widths"]) or min(cfg["depths"]) <= 0:
        raise ExplanationError(
            f"depths: expected {len(cfg['widths'])} positive block counts (one per width), "
            f"got {cfg['depths']}"
        )
    check_conv_stem(cfg.get("stem_channels", ()), cfg["stem_size"], "stem_size")
    if cfg.get("pool", "mean") not in ("mean", "max"):
        raise ExplanationError(f"pool: expected 'mean' or 'max', got {cfg['pool']!r}")
    if float(cfg["layer_scale"]) <= 0:
        raise ExplanationError(f"layer_scale: expected > 0, got {cfg['layer_scale']}")
    s = cfg["stem_size"] * 2 ** (len(cfg["widths"]) - 1)
    h, w = _pair(cfg["input_size"])
    if h % s or w % s:
        raise ExplanationError(
            f"input_size: expected a multiple of {s} (stem and {len(cfg['widths']) - 1} "
            f"downsamplings), got {(h, w)}"
        )


def _config(obj: Any) -> dict:
    return {
        "num_classes": int(obj.num_classes),
        "widths": [int(w) for w in obj.widths],
        "depths": [int(d) for d in obj.depths],
        "stem_size": int(obj.stem_size),
        "stem_channels": [int(c) for c in obj.stem_channels],
        "layer_scale": float(obj.layer_scale),
        "in_channels": int(obj.in_channels),
        "input_size": list(_pair(obj.input_size)),
        "pool": str(obj.pool),
    }


# ----------------------------------------------------------------------------- NNX


class ConvNeXtBlock(nnx.Module):
    """dwconv 7x7 -> LayerNorm -> Dense 4C -> GELU -> Dense C -> layer scale, + residual."""

    def __init__(self, dim: int, layer_scale: float, *, rngs: nnx.Rngs):
        self.dwconv = nnx.Conv(dim, dim, (7, 7), padding="SAME", feature_group_count=dim,
                               kernel_init=_w_init, rngs=rngs)
        self.norm = nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)
        self.pwconv1 = nnx.Linear(dim, 4 * dim, kernel_init=_w_init, rngs=rngs)
        self.pwconv2 = nnx.Linear(4 * dim, dim, kernel_init=_w_init, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.pwconv2(_gelu(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.gamma[...] * y


class NormConv(nnx.Module):
    """``conv`` then ``norm`` (``stem``), or ``norm`` then ``conv`` (``downsample``)."""

    def __init__(self, cin: int, cout: int, size: int, norm_first: bool, *, rngs: nnx.Rngs):
        self.norm_first = norm_first
        self.conv = nnx.Conv(cin, cout, (size, size), strides=(size, size), padding="VALID",
                             kernel_init=_w_init, rngs=rngs)
        self.norm = nnx.LayerNorm(cin if norm_first else cout, epsilon=LN_EPSILON, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.norm_first:
            return self.conv(self.norm(x))
        return self.norm(self.conv(x))


class ConvNeXt(nnx.Module):
    """ConvNeXt-style classifier. (B, H, W, in_channels) float -> (B, num_classes) logits.

    Args:
      num_classes: number of logits K.
      widths: channels of each stage; stages after the first start with a 2x downsampling.
      depths: ConvNeXt blocks per stage.
      stem_size: total stride of the stem (the patchify conv's side and stride when
        ``stem_channels`` is empty).
      stem_channels: channels of 3x3 stride-2 GELU convolutions before the patchify conv.
      pool: global pooling before the head, ``"mean"`` or ``"max"``.
      layer_scale: initial value of every block's layer scale ``gamma``.
      in_channels: input channels C.
      input_size: input (H, W) (an int for square images).
    """

    def __init__(self, num_classes: int = 8, widths: Sequence[int] = (32, 64, 128),
                 depths: Sequence[int] = (1, 1, 1), stem_size: int = 4,
                 layer_scale: float = 0.1, in_channels: int = 3,
                 input_size: int | Sequence[int] = 64, stem_channels: Sequence[int] = (),
                 pool: str = "mean", *, rngs: nnx.Rngs):
        self.num_classes, self.stem_size = int(num_classes), int(stem_size)
        self.widths, self.depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        self.layer_scale, self.in_channels = float(layer_scale), int(in_channels)
        self.input_size = _pair(input_size)
        self.stem_channels = tuple(int(c) for c in stem_channels)
        self.pool = str(pool)
        _check_config(self.config())
        w = self.widths
        self.stem_convs = conv_stem(self.in_channels, self.stem_channels, _w_init, rngs)
        q = self.stem_size // 2 ** len(self.stem_channels)
        stem_out = self.stem_channels[-1] if self.stem_channels else self.in_channels
        self.stem = NormConv(stem_out, w[0], q, False, rngs=rngs)
        self.downsample = nnx.List(
            [NormConv(w[i - 1], w[i], 2, True, rngs=rngs) for i in range(1, len(w))]
        )
        self.stages = nnx.List([
            nnx.List([ConvNeXtBlock(w[i], self.layer_scale, rngs=rngs) for _ in range(d)])
            for i, d in enumerate(self.depths)
        ])
        self.norm = nnx.LayerNorm(w[-1], epsilon=LN_EPSILON, rngs=rngs)
        self.head = nnx.Linear(w[-1], self.num_classes, kernel_init=_w_init, rngs=rngs)

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible) that rebuild this architecture."""
        return _config(self)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_model_input(x, self.in_channels, self.input_size, "ConvNeXt")
        x = self.stem(apply_conv_stem(self.stem_convs, len(self.stem_channels), x))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x)
            for block in stage:
                x = block(x)
        return self.head(self.norm(_global_pool(x, self.pool)))


# ----------------------------------------------------------------------------- Linen


class ConvNeXtBlockLinen(nn.Module):
    """Linen twin of :class:`ConvNeXtBlock`."""

    dim: int
    layer_scale: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(self.dim, (7, 7), padding="SAME", feature_group_count=self.dim,
                    kernel_init=_w_init, name="dwconv")(x)
        y = nn.LayerNorm(epsilon=LN_EPSILON, name="norm")(y)
        y = nn.Dense(4 * self.dim, kernel_init=_w_init, name="pwconv1")(y)
        y = nn.Dense(self.dim, kernel_init=_w_init, name="pwconv2")(_gelu(y))
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale), (self.dim,))
        return x + gamma * y


class NormConvLinen(nn.Module):
    """Linen twin of :class:`NormConv`."""

    features: int
    size: int
    norm_first: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = nn.Conv(self.features, (self.size, self.size), strides=(self.size, self.size),
                       padding="VALID", kernel_init=_w_init, name="conv")
        norm = nn.LayerNorm(epsilon=LN_EPSILON, name="norm")
        return conv(norm(x)) if self.norm_first else norm(conv(x))


class ConvNeXtLinen(nn.Module):
    """Linen twin of :class:`ConvNeXt`: same fields, same parameter layout. ``apply(vars, x)``."""

    num_classes: int = 8
    widths: Sequence[int] = (32, 64, 128)
    depths: Sequence[int] = (1, 1, 1)
    stem_size: int = 4
    layer_scale: float = 0.1
    in_channels: int = 3
    input_size: int | Sequence[int] = 64
    stem_channels: Sequence[int] = ()
    pool: str = "mean"

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible), as :meth:`ConvNeXt.config`."""
        return _config(self)

    def setup(self) -> None:
        _check_config(self.config())
        w, depths, ls = tuple(self.widths), tuple(self.depths), float(self.layer_scale)
        self.stem_convs = conv_stem_linen(self.stem_channels, _w_init)
        self.stem = NormConvLinen(w[0], self.stem_size // 2 ** len(tuple(self.stem_channels)),
                                  False)
        self.downsample = Indexed(lambda i: NormConvLinen(w[i + 1], 2, True), len(w) - 1)
        self.stages = Indexed(
            lambda i: Indexed(lambda j: ConvNeXtBlockLinen(w[i], ls), depths[i]), len(w)
        )
        self.norm = nn.LayerNorm(epsilon=LN_EPSILON)
        self.head = nn.Dense(self.num_classes, kernel_init=_w_init)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_model_input(x, self.in_channels, _pair(self.input_size), "ConvNeXtLinen")
        x = self.stem(apply_conv_stem(self.stem_convs, len(self.stem_channels), x))
        for i, d in enumerate(self.depths):
            if i > 0:
                x = self.downsample[i - 1](x)
            for j in range(d):
                x = self.stages[i][j](x)
        return self.head(self.norm(_global_pool(x, self.pool)))


# ----------------------------------------------------------------------------- shipped model


def build_convnext(seed: int = 0, **overrides: Any) -> ConvNeXt:
    """A freshly initialised :class:`ConvNeXt` with :data:`CONFIG` (``overrides`` replace keys)."""
    return ConvNeXt(**{**CONFIG, **overrides}, rngs=nnx.Rngs(seed))


def linen_module(model: ConvNeXt) -> ConvNeXtLinen:
    """The :class:`ConvNeXtLinen` with ``model``'s architecture."""
    cfg = model.config()
    return ConvNeXtLinen(**{**cfg, "widths": tuple(cfg["widths"]),
                            "depths": tuple(cfg["depths"]),
                            "stem_channels": tuple(cfg["stem_channels"]),
                            "input_size": tuple(cfg["input_size"])})


def train_convnext(path: str | os.PathLike | None = None,
                   **kwargs: Any) -> tuple[ConvNeXt, dict]:
    """Train the reference ConvNeXt with :data:`RECIPE` (kwargs: see ``train_reference``)."""
    return train_reference(build_convnext, RECIPE, path, **kwargs)


def convnext_model(path: str | os.PathLike | None = None) -> ConvNeXt:
    """The trained ConvNeXt at ``path`` (eval mode): (B, 64, 64, 3) in [0, 1] -> (B, 8) logits.

    ``path`` defaults to the shipped asset, written by
    ``benchmarks/train_reference_models.py convnext`` (94.7% on the embedded test split).
    """
    return load_reference(PATH if path is None else path, _template, "ConvNeXt")


def convnext_linen(path: str | os.PathLike | None = None) -> Any:
    """The ConvNeXt at ``path`` as ``jaxlrp.linen(ConvNeXtLinen(...), variables)`` (same arrays)."""
    model = convnext_model(path)
    return to_linen(model, linen_module(model))


def _template() -> ConvNeXt:
    return build_convnext(0)
