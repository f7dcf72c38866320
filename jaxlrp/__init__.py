"""jaxlrp: Grad-CAM, LRP and their hybrid (arXiv 2405.12175) for Flax models, with a JAX
evaluation suite.

Main entry points, all pure functions ``(model, x, target) -> map`` that compose with
``jax.jit``, ``jax.vmap`` and ``jax.grad``:

* :func:`gradcam`, :func:`gradcam_pp`, :func:`xgradcam`, :func:`layercam`,
  :func:`hirescam`, :func:`scorecam` -> (B, H, W)
* :func:`lrp` -> (B, H, W, C) input relevance; :mod:`rules`, :mod:`composites`,
  :mod:`canonizers` configure it
* :func:`hybrid` -> (B, H, W) in [0, 1]
* :mod:`metrics` and :func:`evaluate` score explanations.

The implementation modules are private (``jaxlrp._tracing``, ``jaxlrp._lrp``,
``jaxlrp._hybrid``, ...); everything public is re-exported here or lives in a public
module (:mod:`cam`, :mod:`explainers`, :mod:`metrics`, :mod:`rules`, :mod:`composites`,
:mod:`canonizers`, :mod:`models`, :mod:`data`, :mod:`evaluation`; see
docs/architecture.md). No module shares its name with a function.

``model`` is a Flax NNX module, or a Linen module with its variables as a pair
``(module, variables)``, :func:`linen` ``(module, variables, **apply_kwargs)`` or a bound
module. :func:`model` ``(model, output=..., softmax=...)`` picks the logits of a
structured output and keeps a final softmax (by default it is stripped: logits are
explained).
"""

from __future__ import annotations

import importlib

from jaxlrp import canonizers, composites, explainers, metrics, rules
from jaxlrp._cache import clear_caches
from jaxlrp._hybrid import HybridParts, cam_methods, combine, hybrid
from jaxlrp._lrp.engine import LayerRelevance, lrp
from jaxlrp._lrp.memory import chunked
from jaxlrp._tracing import LinenModel, layers, linen, model
from jaxlrp.cam import (
    CAMS,
    gradcam,
    gradcam_pp,
    hirescam,
    layercam,
    register_cam,
    scorecam,
    xgradcam,
)
from jaxlrp.errors import ExplanationError, UnsupportedOperationError

__version__ = "0.1.0"

_LAZY = {
    "evaluate": ("jaxlrp.evaluation", "evaluate"),
    "Results": ("jaxlrp.evaluation", "Results"),
    "explain_dataset": ("jaxlrp.distributed", "explain_dataset"),
    "explain_panels": ("jaxlrp.panels", "explain_panels"),
    "models": ("jaxlrp.models", None),
    "data": ("jaxlrp.data", None),
    "photos": ("jaxlrp.photos", None),
    "viz": ("jaxlrp.viz", None),
    "training": ("jaxlrp.training", None),
    "checkpoint": ("jaxlrp.checkpoint", None),
    "convert": ("jaxlrp.convert", None),
    "enable_compilation_cache": ("jaxlrp.compilation_cache", "enable_compilation_cache"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'jaxlrp' has no attribute {name!r}")


__all__ = [
    "CAMS",
    "ExplanationError",
    "HybridParts",
    "LayerRelevance",
    "LinenModel",
    "UnsupportedOperationError",
    "cam_methods",
    "canonizers",
    "chunked",
    "clear_caches",
    "combine",
    "composites",
    "explainers",
    "gradcam",
    "gradcam_pp",
    "hirescam",
    "hybrid",
    "layercam",
    "layers",
    "linen",
    "lrp",
    "metrics",
    "model",
    "register_cam",
    "rules",
    "scorecam",
    "xgradcam",
    *sorted(_LAZY),
]
