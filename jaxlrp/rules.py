"""LRP rules: how relevance at a layer's output is redistributed to its inputs.

The public namespace of the rule families (each formula table is in its module's
docstring): weight and weightless rules (:mod:`jaxlrp._lrp.rules`), normalisation rules
(:mod:`jaxlrp._lrp.norm_rules`), softmax and product rules
(:mod:`jaxlrp._lrp.attention_rules`) and AttnLRP's elementwise rule
(:mod:`jaxlrp._lrp.elementwise_rules`). A new rule is one class in one of those modules,
exported here.
"""

from jaxlrp._lrp.attention_rules import (
    HoldConstant,
    ProductLayer,
    SoftmaxConstant,
    SoftmaxDTD,
    SoftmaxIdentity,
    Uniform,
)
from jaxlrp._lrp.elementwise_rules import IdentityOrEpsilon
from jaxlrp._lrp.norm_rules import NormEpsilon, NormIdentity
from jaxlrp._lrp.rules import (
    Alpha1Beta0,
    Alpha2Beta1,
    AlphaBeta,
    Epsilon,
    Flat,
    FunctionLayer,
    Gamma,
    Gradient,
    LinearLayer,
    Norm,
    Pass,
    Rule,
    WPlus,
    WSquare,
    ZBox,
    ZPlus,
    divide,
    stabilize,
)

__all__ = [
    "Alpha1Beta0", "Alpha2Beta1", "AlphaBeta", "Epsilon", "Flat", "FunctionLayer", "Gamma",
    "Gradient", "HoldConstant", "IdentityOrEpsilon", "LinearLayer", "Norm", "NormEpsilon",
    "NormIdentity", "Pass", "ProductLayer", "Rule", "SoftmaxConstant", "SoftmaxDTD",
    "SoftmaxIdentity", "Uniform", "WPlus", "WSquare", "ZBox", "ZPlus", "divide", "stabilize",
]
