"""LRP composites: which rule goes to which layer (public namespace of
:mod:`jaxlrp._lrp.composites`, where the formula of each preset is documented).

``PRESETS`` is the one registry of named composites: a new preset is one function in
:mod:`jaxlrp._lrp.composites` and one line in ``PRESETS``; ``jaxlrp explain --composite``,
``explainers.get("lrp", composite=name)`` and ``hybrid(composite=name)`` find it by name.
"""

from jaxlrp._lrp.composites import (
    DEFAULTS,
    PRESETS,
    Composite,
    LayerContext,
    LayerMap,
    attn_lrp,
    cp_lrp,
    epsilon,
    epsilon_alpha2_beta1,
    epsilon_alpha2_beta1_flat,
    epsilon_gamma_box,
    epsilon_plus,
    epsilon_plus_flat,
    get,
    layer_map,
    paper,
)

__all__ = [
    "DEFAULTS", "PRESETS", "Composite", "LayerContext", "LayerMap", "attn_lrp", "cp_lrp",
    "epsilon", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box",
    "epsilon_plus", "epsilon_plus_flat", "get", "layer_map", "paper",
]
