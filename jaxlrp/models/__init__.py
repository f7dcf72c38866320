"""Reference models (VGG, ResNet, ViT, ConvNeXt, EfficientNet-Lite0) in Flax NNX and Linen.

Submodules are imported lazily so that ``import jaxlrp`` stays fast.
"""

from __future__ import annotations

import importlib

_LAZY = {
    # name -> submodule that defines it
    "VGG": "vgg",
    "VGGLinen": "vgg",
    "ResNet": "resnet",
    "ResNetLinen": "resnet",
    "default_model": "default",
    "load_default_model": "default",
    "efficientnet_lite0": "efficientnet",
    "EfficientNetLite0": "efficientnet",
    "preprocess": "efficientnet",
    "imagenet_classes": "efficientnet",
    "soften": "softening",
    "ViT": "vit",
    "ViTLinen": "vit",
    "vit_model": "vit",
    "vit_linen": "vit",
    "ConvNeXt": "convnext",
    "ConvNeXtLinen": "convnext",
    "convnext_model": "convnext",
    "convnext_linen": "convnext",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"jaxlrp.models.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jaxlrp.models' has no attribute {name!r}")


__all__ = sorted(_LAZY)
