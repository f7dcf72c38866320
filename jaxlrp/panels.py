"""The comparison panels "CAM | LRP | hybrid" of one batch, from one hybrid pass.

:func:`explain_panels` is what ``jaxlrp explain --compare`` and ``jaxlrp demo`` draw: the
hybrid's own CAM, its LRP map normalised as the ``lrp`` explainer normalises it
(:func:`jaxlrp.explainers.lrp_map`), and the hybrid, with the logits, all from one call of
:func:`jaxlrp._hybrid.hybrid` with ``return_parts=True`` (one forward pass for the CAM and
the LRP). Pure and jittable: ``jax.jit(explain_panels)`` compiles once per model
structure, batch shape and options.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from jaxlrp._hybrid import hybrid
from jaxlrp._image import max_abs_normalize


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["logits", "cam", "lrp", "hybrid"],
    meta_fields=["cam_method"],
)
@dataclasses.dataclass(frozen=True)
class Panels:
    """The logits and the three comparison maps of a batch.

    Attributes:
      logits: (B, K) the model's outputs.
      cam: (B, H, W) the hybrid's CAM (method ``cam_method``), in [0, 1].
      lrp: (B, H, W) the channel-reduced LRP map divided by its per-image max ``|R|``, in
        [-1, 1] (as :func:`jaxlrp.explainers.lrp_map`).
      hybrid: (B, H, W) the hybrid, in [0, 1].
      cam_method: the CAM's name, e.g. ``"gradcam++"``.
    """

    logits: jax.Array
    cam: jax.Array
    lrp: jax.Array
    hybrid: jax.Array
    cam_method: str

    def maps(self) -> dict[str, jax.Array]:
        """``{cam_method: cam, "lrp": lrp, "hybrid": hybrid}``, in panel order."""
        return {self.cam_method: self.cam, "lrp": self.lrp, "hybrid": self.hybrid}


def explain_panels(
    model: Any,
    x: jax.Array,
    target: Any = "predicted",
    *,
    cam: str = "gradcam++",
    layer: str | None = None,
    threshold: float = 0.2,
    composite: Any = None,
    canonizers: Any = None,
    reduce: str = "mean",
    ksize: int = 5,
    sigma: float = 4.0,
) -> Panels:
    """CAM, LRP and hybrid maps of ``x`` (and the logits) from one hybrid pass.

    Args:
      model: an NNX module, ``(linen_module, variables)`` or ``jaxlrp.linen(...)``.
      x: (B, H, W, C) floating images.
      target: an int, a (B,) int array or ``"predicted"``.
      cam, layer, threshold, composite, canonizers, reduce, ksize, sigma: the options of
        :func:`jaxlrp._hybrid.hybrid` (the CAM panel is the hybrid's CAM, the LRP panel
        uses its composite and channel reduction).
    Returns:
      :class:`Panels`; ``panels.maps()`` gives the three maps by name.
    """
    parts = hybrid(model, x, target, cam=cam, layer=layer, threshold=threshold,
                   composite=composite, canonizers=canonizers, reduce=reduce, ksize=ksize,
                   sigma=sigma, return_parts=True)
    # parts.relevance_map is the reduced relevance over its positive max; dividing by the
    # max |.| gives the reduced relevance over its max |R|: the ``lrp`` explainer's map
    return Panels(parts.logits, parts.cam, max_abs_normalize(parts.relevance_map), parts.hybrid,
                  cam)


__all__ = ["Panels", "explain_panels"]
