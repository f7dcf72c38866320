"""Layer-wise relevance propagation over unmodified Flax models.

* :mod:`~jaxlrp.lrp.rules`: how relevance crosses one layer;
* :mod:`~jaxlrp.lrp.norm_rules`, :mod:`~jaxlrp.lrp.attention_rules`,
  :mod:`~jaxlrp.lrp.elementwise_rules`: normalisation, softmax/product and AttnLRP's
  elementwise rules;
* :mod:`~jaxlrp.lrp.patterns`: normalisation, softmax and products recognised in the jaxpr;
* :mod:`~jaxlrp.lrp.composites`: which rule goes to which layer;
* :mod:`~jaxlrp.lrp.canonizers`: graph rewrites such as BatchNorm folding;
* :mod:`~jaxlrp.lrp.graph`: the model read from its jaxpr as a graph of layers;
* :mod:`~jaxlrp.lrp.pooling`: max-pooling with a fast derivative for the engine;
* :mod:`~jaxlrp.lrp.engine`: :func:`lrp`, the forward and relevance passes.
"""

from jaxlrp.lrp import (
    attention_rules,
    canonizers,
    composites,
    elementwise_rules,
    norm_rules,
    rules,
)
from jaxlrp.lrp.engine import LayerRelevance, lrp, prepare

__all__ = [
    "LayerRelevance", "attention_rules", "canonizers", "composites", "elementwise_rules",
    "lrp", "norm_rules", "prepare", "rules",
]
