"""Layer-wise relevance propagation over unmodified Flax models.

* :mod:`~jaxlrp.rules`: how relevance crosses one layer;
* :mod:`~jaxlrp._lrp.norm_rules`, :mod:`~jaxlrp._lrp.attention_rules`,
  :mod:`~jaxlrp._lrp.elementwise_rules`: normalisation, softmax/product and AttnLRP's
  elementwise rules;
* :mod:`~jaxlrp._lrp.patterns`: normalisation, softmax and products recognised in the jaxpr;
* :mod:`~jaxlrp.composites`: which rule goes to which layer;
* :mod:`~jaxlrp.canonizers`: graph rewrites such as BatchNorm folding;
* :mod:`~jaxlrp._lrp.graph`: the model read from its jaxpr as a graph of layers;
* :mod:`~jaxlrp._lrp.pooling`: max-pooling with a fast derivative for the engine;
* :mod:`~jaxlrp._lrp.engine`: :func:`lrp`, the forward and relevance passes.
"""

from jaxlrp._lrp import (
    attention_rules,
    canonizers,
    composites,
    elementwise_rules,
    norm_rules,
    rules,
)
from jaxlrp._lrp.engine import LayerRelevance, lrp, prepare

__all__ = [
    "LayerRelevance", "attention_rules", "canonizers", "composites", "elementwise_rules",
    "lrp", "norm_rules", "prepare", "rules",
]
