"""The shipped models by name, with the defaults the command line uses for each.

``jaxlrp explain --model NAME`` and ``jaxlrp demo`` read the same entry, so both explain a
shipped model with the same LRP composite unless ``--composite`` says otherwise. A
checkpoint path (``--model PATH``) uses :data:`CHECKPOINT_COMPOSITE`.

========================  =====================  ===============================================
name                      default composite      why
========================  =====================  ===============================================
``efficientnet-lite0``    ``epsilon_plus_flat``  inputs lie in [-1, 1]: z+ at the input layer
                                                 gives sparse, sign-alternating speckle (the
                                                 hybrid becomes a few isolated dots); Flat at
                                                 the input layer, z+ on the other convolutions
                                                 and epsilon on the dense layer do not
``default``               ``paper``              inputs lie in [0, 1], as the paper assumes
``convnext``              ``attn_lrp``           LayerNorm and GELU: AttnLRP's rules
                                                 (Achtibat et al., ICML 2024)
``vit``                   ``attn_lrp``           attention, softmax, LayerNorm and GELU:
                                                 AttnLRP's rules, made for transformers
========================  =====================  ===============================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxlrp.errors import ExplanationError

CHECKPOINT_COMPOSITE = "paper"
"""Default LRP composite for a model loaded from a checkpoint path."""


def _efficientnet_lite0() -> Any:
    from jaxlrp.models.efficientnet import efficientnet_lite0

    return efficientnet_lite0()


def _default_vgg() -> Any:
    from jaxlrp.models.default import load_default_model

    return load_default_model()


def _convnext() -> Any:
    from jaxlrp.models.convnext import convnext_model

    return convnext_model()


def _vit() -> Any:
    from jaxlrp.models.vit import vit_model

    return vit_model()


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One shipped model: its name, loader, description and default LRP composite.

    ``composite`` is a preset name of :data:`jaxlrp.composites.PRESETS`, used for
    ``lrp`` and ``hybrid`` (and their comparison panels) when no composite is given.
    """

    name: str
    load: Callable[[], Any]
    description: str
    composite: str
    aliases: tuple[str, ...] = ()


SHIPPED: dict[str, ModelEntry] = {
    "efficientnet-lite0": ModelEntry(
        "efficientnet-lite0", _efficientnet_lite0, "ImageNet, 224x224, shipped weights",
        "epsilon_plus_flat", aliases=("efficientnet_lite0",)),
    "default": ModelEntry(
        "default", _default_vgg, "VGG on the embedded shapes, 64x64", "paper"),
    "convnext": ModelEntry(
        "convnext", _convnext, "ConvNeXt-style CNN on the embedded shapes, 64x64", "attn_lrp"),
    "vit": ModelEntry(
        "vit", _vit, "Vision Transformer (conv stem, class token) on the embedded shapes, "
        "64x64", "attn_lrp"),
}
"""Shipped models by ``--model`` name (in the order the command line lists them)."""


def entry(name: str) -> ModelEntry:
    """The shipped model called ``name`` (or one of its aliases)."""
    for e in SHIPPED.values():
        if name == e.name or name in e.aliases:
            return e
    raise ExplanationError(f"model: expected one of {list(SHIPPED)}, got {name!r}")


def is_shipped(name: str) -> bool:
    """Whether ``name`` names a shipped model (or an alias of one)."""
    return any(name == e.name or name in e.aliases for e in SHIPPED.values())


__all__ = ["CHECKPOINT_COMPOSITE", "SHIPPED", "ModelEntry", "entry", "is_shipped"]
