"""A small ResNet with torchvision-style BasicBlocks, in Flax NNX and Flax Linen.

Layout (the same in :class:`ResNet`, :class:`ResNetLinen` and the PyTorch twin)::

    conv1, bn1                 stem: conv 3x3 stride 1 (no bias) -> BatchNorm -> ReLU
    layer1/0 ... layerS/N-1    BasicBlocks: conv1-bn1-ReLU-conv2-bn2 (+ identity or
                               downsample/conv 1x1 + downsample/bn) -> add -> ReLU
    fc                         global average pool -> Dense logits (B, K)

Stage ``s > 1`` starts with a stride-2 block. Convolutions pad explicitly by 1
(as ``torch.nn.Conv2d(padding=1)``), so strided outputs match PyTorch exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxlrp.errors import ExplanationError
from jaxlrp.models.vgg import (
    BN_EPSILON,
    BN_MOMENTUM,
    Indexed,
    check_model_input,
    load_linen_variables,
    nnx_to_linen_variables,
    scaled_normal,
)

__all__ = [
    "ResNet",
    "ResNetLinen",
    "BasicBlock",
    "nnx_to_linen",
    "linen_to_nnx",
    "nnx_to_linen_variables",
]

_PAD1 = ((1, 1), (1, 1))
_conv_init = scaled_normal(2.0)
_head_init = scaled_normal(1.0)


def _bn(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride),
                    padding=_PAD1 if k == 3 else "VALID", use_bias=False,
                    kernel_init=_conv_init, rngs=rngs)


# ----------------------------------------------------------------------------- NNX


class Downsample(nnx.Module):
    """Shortcut projection: conv 1x1 (stride s, no bias) -> BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 1, stride, rngs)
        self.bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """torchvision BasicBlock. (B, H, W, Cin) -> (B, H/stride, W/stride, Cout)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = _bn(cout, rngs)
        self.downsample = (
            Downsample(cin, cout, stride, rngs=rngs) if stride != 1 or cin != cout else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(out + identity)


class ResNet(nnx.Module):
    """ResNet classifier. (B, H, W, in_channels) float -> (B, num_classes) logits.

    Args:
      num_classes: number of logits K.
      widths: channels of each stage (stage s > 1 halves the resolution).
      blocks_per_stage: BasicBlocks per stage.
      in_channels: input channels C.
    """

    def __init__(
        self,
        num_classes: int = 8,
        widths: Sequence[int] = (16, 32),
        blocks_per_stage: int = 1,
        in_channels: int = 3,
        *,
        rngs: nnx.Rngs,
    ):
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        self.blocks_per_stage = int(blocks_per_stage)
        self.in_channels = int(in_channels)
        _check_resnet_config(self.config())

        self.conv1 = _conv(self.in_channels, self.widths[0], 3, 1, rngs)
        self.bn1 = _bn(self.widths[0], rngs)
        cin = self.widths[0]
        for s, width in enumerate(self.widths):
            blocks = []
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BasicBlock(cin, width, stride, rngs=rngs))
                cin = width
            setattr(self, f"layer{s + 1}", nnx.List(blocks))
        self.fc = nnx.Linear(cin, self.num_classes, kernel_init=_head_init, rngs=rngs)

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible) that rebuild this architecture."""
        return {
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "blocks_per_stage": self.blocks_per_stage,
            "in_channels": self.in_channels,
        }

    def __call__(self, x: jax.Array) -> jax.Array:
        check_model_input(x, self.in_channels, None, "ResNet")
        x = nnx.relu(self.bn1(self.conv1(x)))
        for s in range(len(self.widths)):
            for block in getattr(self, f"layer{s + 1}"):
                x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))


def _check_resnet_config(cfg: dict) -> None:
    for key in ("num_classes", "blocks_per_stage", "in_channels"):
        if cfg[key] <= 0:
            raise ExplanationError(f"{key}: expected a positive int, got {cfg[key]}")
    if not cfg["widths"] or min(cfg["widths"]) <= 0:
        raise ExplanationError(f"widths: expected positive channel counts, got {cfg['widths']}")


# ----------------------------------------------------------------------------- Linen


def _lbn(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                        epsilon=BN_EPSILON, name=name)


def _lconv(cout: int, k: int, stride: int, name: str) -> nn.Conv:
    return nn.Conv(cout, (k, k), strides=(stride, stride), padding=_PAD1 if k == 3 else "VALID",
                   use_bias=False, kernel_init=_conv_init, name=name)


class DownsampleLinen(nn.Module):
    """Linen twin of :class:`Downsample`."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return _lbn(train, "bn")(_lconv(self.features, 1, self.stride, "conv")(x))


class BasicBlockLinen(nn.Module):
    """Linen twin of :class:`BasicBlock`."""

    features: int
    stride: int
    project: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = nn.relu(_lbn(train, "bn1")(_lconv(self.features, 3, self.stride, "conv1")(x)))
        out = _lbn(train, "bn2")(_lconv(self.features, 3, 1, "conv2")(out))
        identity = x
        if self.project:
            identity = DownsampleLinen(self.features, self.stride, name="downsample")(x, train)
        return nn.relu(out + identity)


class ResNetLinen(nn.Module):
    """Linen twin of :class:`ResNet` with the same fields and parameter layout.

    ``apply(variables, x, train=False)``; with ``train=True`` pass ``mutable=["batch_stats"]``.
    """

    num_classes: int = 8
    widths: Sequence[int] = (16, 32)
    blocks_per_stage: int = 1
    in_channels: int = 3

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible), as :meth:`ResNet.config`."""
        return {
            "num_classes": int(self.num_classes),
            "widths": [int(w) for w in self.widths],
            "blocks_per_stage": int(self.blocks_per_stage),
            "in_channels": int(self.in_channels),
        }

    def setup(self) -> None:
        _check_resnet_config(self.config())
        widths, n = list(self.widths), self.blocks_per_stage
        self.conv1 = _lconv_setup(widths[0])
        self.bn1 = nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
        cins = [widths[0]] + widths[:-1]
        for s, width in enumerate(widths):
            def make(b: int, s: int = s, width: int = width) -> BasicBlockLinen:
                stride = 2 if (s > 0 and b == 0) else 1
                cin = cins[s] if b == 0 else width
                return BasicBlockLinen(width, stride, stride != 1 or cin != width)

            setattr(self, f"layer{s + 1}", Indexed(make, n))
        self.fc = nn.Dense(self.num_classes, kernel_init=_head_init)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_model_input(x, self.in_channels, None, "ResNetLinen")
        x = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        for s in range(len(self.widths)):
            stage = getattr(self, f"layer{s + 1}")
            for b in range(self.blocks_per_stage):
                x = stage[b](x, train)
        return self.fc(jnp.mean(x, axis=(1, 2)))


def _lconv_setup(cout: int) -> nn.Conv:
    return nn.Conv(cout, (3, 3), padding=_PAD1, use_bias=False, kernel_init=_conv_init)


# ----------------------------------------------------------------------------- conversion


def nnx_to_linen(model: ResNet) -> tuple[ResNetLinen, dict]:
    """``(ResNetLinen, variables)`` with the same architecture and arrays as ``model``."""
    if not isinstance(model, ResNet):
        raise ExplanationError(f"model: expected a jaxlrp ResNet, got {type(model).__name__}")
    cfg = model.config()
    module = ResNetLinen(**{**cfg, "widths": tuple(cfg["widths"])})
    return module, nnx_to_linen_variables(model)


def linen_to_nnx(module: ResNetLinen, variables: Any) -> ResNet:
    """A :class:`ResNet` holding ``variables`` of the Linen ``module``, in eval mode."""
    if not isinstance(module, ResNetLinen):
        raise ExplanationError(f"module: expected a ResNetLinen, got {type(module).__name__}")
    model = ResNet(**module.config(), rngs=nnx.Rngs(0))
    load_linen_variables(model, variables)
    model.eval()
    return model
