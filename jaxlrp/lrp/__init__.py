"""Layer-wise relevance propagation over unmodified Flax models.

* :mod:`~jaxlrp.lrp.rules`: how relevance crosses one layer;
* :mod:`~jaxlrp.lrp.composites`: which rule goes to which layer;
* :mod:`~jaxlrp.lrp.canonizers`: graph rewrites such as BatchNorm folding;
* :mod:`~jaxlrp.lrp.graph`: the model read from its jaxpr as a graph of layers;
* :mod:`~jaxlrp.lrp.pooling`: max-pooling with a fast derivative for the engine;
* :mod:`~jaxlrp.lrp.engine`: :func:`lrp`, the forward and relevance passes.
"""

from jaxlrp.lrp import canonizers, composites, rules
from jaxlrp.lrp.engine import LayerRelevance, lrp, prepare

__all__ = ["LayerRelevance", "canonizers", "composites", "lrp", "prepare", "rules"]
