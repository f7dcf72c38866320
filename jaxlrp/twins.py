"""PyTorch twins of jaxlrp's reference models, for comparisons against PyTorch peers.

This module imports torch; the explainers never import it.

* :func:`to_torch` builds a ``torch.nn.Module`` with the same weights, in eval mode.
  The VGG twin is ``features`` (an ``nn.Sequential`` of Conv2d, [BatchNorm2d], ReLU,
  MaxPool2d) -> ``torch.flatten`` -> ``classifier`` (Linear, ReLU, ..., Linear), like
  torchvision's VGG, so Zennit's ``VGGCanonizer`` / ``SequentialMergeBatchNorm`` and
  Captum's LRP apply. The first Linear's input columns are permuted so that the NCHW
  flatten of torch matches the NHWC flatten of Flax, with no extra operation.
  The ResNet twin uses ``torchvision.models.resnet.BasicBlock`` (Zennit's
  ``ResNetCanonizer`` recognises it) with our stem and head.
* :func:`to_torch_input` and :func:`from_torch_map` move images/maps between NHWC
  (JAX) and NCHW (torch).

Use ``twin.double()`` with ``jax_enable_x64`` for float64 comparisons.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flax import nnx
from torch import nn
from torchvision.models.resnet import BasicBlock as TorchBasicBlock

from jaxlrp._tracing import LinenModel
from jaxlrp.errors import ExplanationError
from jaxlrp.models import resnet as _resnet
from jaxlrp.models import vgg as _vgg

__all__ = ["to_torch", "to_torch_input", "from_torch_map", "VGGTwin", "ResNetTwin"]


class VGGTwin(nn.Module):
    """torchvision-style VGG: features -> flatten -> classifier. Input (B, C, H, W)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, avg: bool = False):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1) if avg else None
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.avgpool is not None:
            x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


class ResNetTwin(nn.Module):
    """ResNet with a 3x3 stem and torchvision BasicBlocks. Input (B, C, H, W)."""

    def __init__(self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d, layers: list[nn.Sequential],
                 fc: nn.Linear):
        super().__init__()
        self.conv1 = conv1
        self.bn1 = bn1
        self.relu = nn.ReLU()
        for i, layer in enumerate(layers):
            self.add_module(f"layer{i + 1}", layer)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def to_torch(model: Any) -> nn.Module:
    """The PyTorch twin of a jaxlrp VGG/ResNet (NNX module, Linen pair or ``jaxlrp.linen``).

    Returns a float32 module in eval mode with identical weights; inputs are NCHW.
    """
    model = _as_nnx(model)
    if isinstance(model, _vgg.VGG):
        twin = _vgg_twin(model)
    elif isinstance(model, _resnet.ResNet):
        twin = _resnet_twin(model)
    else:
        raise ExplanationError(
            f"model: to_torch supports jaxlrp VGG and ResNet models, got {type(model).__name__}"
        )
    return twin.float().eval()


def to_torch_input(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, H, W, C) array -> (B, C, H, W) contiguous torch tensor (same dtype unless given)."""
    a = np.asarray(x)
    if a.ndim != 4:
        raise ExplanationError(f"x: expected NHWC images of rank 4, got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    return t if dtype is None else t.to(dtype)


def from_torch_map(m: Any) -> np.ndarray:
    """A torch map to numpy NHWC: (B, C, H, W) -> (B, H, W, C); (B, H, W) is kept."""
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    a = np.asarray(m)
    if a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    if a.ndim == 3:
        return a
    raise ExplanationError(f"m: expected a (B, C, H, W) or (B, H, W) map, got shape {a.shape}")


# ----------------------------------------------------------------------------- internals


def _as_nnx(model: Any) -> nnx.Module:
    if isinstance(model, nnx.Module):
        return model
    if isinstance(model, LinenModel):
        module, variables = model.module, model.variables
    elif isinstance(model, tuple) and len(model) == 2:
        module, variables = model
    else:
        raise ExplanationError(
            f"model: expected an NNX VGG/ResNet or a (VGGLinen/ResNetLinen, variables) pair, "
            f"got {type(model).__name__}"
        )
    if isinstance(module, _vgg.VGGLinen):
        return _vgg.linen_to_nnx(module, variables)
    if isinstance(module, _resnet.ResNetLinen):
        return _resnet.linen_to_nnx(module, variables)
    raise ExplanationError(
        f"model: to_torch supports VGGLinen and ResNetLinen, got {type(module).__name__}"
    )


def _t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _conv(conv: nnx.Conv, padding: int) -> nn.Conv2d:
    k = np.asarray(conv.kernel[...])  # (kh, kw, cin, cout)
    bias = conv.bias is not None
    stride = conv.strides if isinstance(conv.strides, int) else conv.strides[0]
    out = nn.Conv2d(k.shape[2], k.shape[3], (k.shape[0], k.shape[1]), stride=stride,
                    padding=padding, bias=bias)
    with torch.no_grad():
        out.weight.copy_(_t(k.transpose(3, 2, 0, 1)))
        if bias:
            out.bias.copy_(_t(conv.bias[...]))
    return out


def _bn(bn: nnx.BatchNorm) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(bn.num_features, eps=bn.epsilon, momentum=1.0 - bn.momentum)
    with torch.no_grad():
        out.weight.copy_(_t(bn.scale[...]))
        out.bias.copy_(_t(bn.bias[...]))
        out.running_mean.copy_(_t(bn.mean[...]))
        out.running_var.copy_(_t(bn.var[...]))
    return out


def _linear(dense: nnx.Linear, kernel: np.ndarray | None = None) -> nn.Linear:
    k = np.asarray(dense.kernel[...]) if kernel is None else kernel  # (in, out)
    out = nn.Linear(k.shape[0], k.shape[1])
    with torch.no_grad():
        out.weight.copy_(_t(k.T))
        out.bias.copy_(_t(dense.bias[...]))
    return out


def _vgg_twin(model: _vgg.VGG) -> VGGTwin:
    layers: list[nn.Module] = []
    channels = model.in_channels
    for i, block in enumerate(model.features):
        layers.append(_conv(block.conv, padding=1))
        if block.bn is not None:
            layers.append(_bn(block.bn))
        layers.append(nn.ReLU())
        channels = block.conv.out_features
        if i in model.pool_after:
            layers.append(nn.MaxPool2d(2, 2))
    s = 2 ** len(model.widths)
    h, w = model.input_size[0] // s, model.input_size[1] // s
    dense = list(model.classifier)
    first = dense[0].dense if dense else model.head
    k = np.asarray(first.kernel[...])  # rows in (h, w, c) order
    if getattr(model, "pool", "flatten") == "avg":
        h = w = 1
    k = k.reshape(h, w, channels, -1).transpose(2, 0, 1, 3).reshape(h * w * channels, -1)
    head: list[nn.Module] = []
    for j, block in enumerate(dense):
        head += [_linear(block.dense, k if j == 0 else None), nn.ReLU()]
    head.append(_linear(model.head, None if dense else k))
    return VGGTwin(nn.Sequential(*layers), nn.Sequential(*head),
                   avg=getattr(model, "pool", "flatten") == "avg")


def _resnet_twin(model: _resnet.ResNet) -> ResNetTwin:
    stages = []
    for s in range(len(model.widths)):
        blocks = []
        for block in getattr(model, f"layer{s + 1}"):
            cin, cout = block.conv1.in_features, block.conv1.out_features
            stride = block.conv1.strides
            stride = stride if isinstance(stride, int) else stride[0]
            down = None
            if block.downsample is not None:
                down = nn.Sequential(_conv(block.downsample.conv, 0), _bn(block.downsample.bn))
            tb = TorchBasicBlock(cin, cout, stride=stride, downsample=down)
            tb.conv1, tb.bn1 = _conv(block.conv1, 1), _bn(block.bn1)
            tb.conv2, tb.bn2 = _conv(block.conv2, 1), _bn(block.bn2)
            blocks.append(tb)
        stages.append(nn.Sequential(*blocks))
    return ResNetTwin(_conv(model.conv1, 1), _bn(model.bn1), stages, _linear(model.fc))
