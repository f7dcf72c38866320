"""LRP rules for normalisation layers (LayerNorm, GroupNorm, RMSNorm, InstanceNorm, ...).

A ``norm`` node (recognised by :mod:`jaxlrp._lrp.patterns`) computes, for example,

    y = (x - mean(x)) * s(x) * gamma + beta,    s(x) = 1 / sqrt(var(x) + eps_ln)

(RMSNorm: ``y = x * s(x) * gamma``). The engine hands the rule the node as a function
of ``x`` with the *statistic* ``s`` held at its forward value (the "LN rule" of CP-LRP,
Ali et al. 2022, and AttnLRP, Achtibat et al. 2024, Prop. 3.4; LXT's
``stop_gradient(std)``). The centring ``x - mean(x)`` stays a linear map of ``x``, so
the node is affine: ``y = J x + beta`` with ``J = diag(s * gamma) (I - 1 1^T / N)`` per
normalised group, and the scale ``gamma`` and bias ``beta`` are part of it like a
folded BatchNorm. ``stab(z) = z + eps * sign(z)``.

=================  ===========================================  ===============================
rule               input relevance ``R_x``                      conserves
=================  ===========================================  ===============================
NormEpsilon(eps)   ``x * J^T (R / stab(y))``: LRP-epsilon        yes without ``beta`` (up to
                   through the affine map; equals LXT's          eps); ``beta`` absorbs its
                   ``layer_norm``/``rms_norm`` rules (eps=0)     share ``beta * R / y``
NormIdentity()     ``R``: relevance passes unchanged (LXT's      yes, always
                   ``rms_norm_identity``/``normalize``)
=================  ===========================================  ===============================

For RMSNorm without ``beta`` both rules agree: ``J x = y`` elementwise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlrp._lrp.rules import _check_eps, divide
from jaxlrp.errors import ExplanationError


def _needs_norm(rule, layer) -> None:
    if getattr(layer, "kind", None) != "norm":
        raise ExplanationError(
            f"composite: rule {type(rule).__name__} needs a 'norm' layer, but was assigned to "
            f"a '{layer.kind}' layer at '{layer.path or '<root>'}'"
        )


@dataclasses.dataclass(frozen=True)
class NormEpsilon:
    """LRP-epsilon through the normalisation with its statistics held constant."""

    epsilon: float = 1e-6

    def __post_init__(self):
        _check_eps("epsilon", self.epsilon)

    def __call__(self, layer, inputs, relevance):
        _needs_norm(self, layer)
        (x,) = inputs
        y, vjp = jax.vjp(layer.fn, x)
        (g,) = vjp(divide(relevance, y, self.epsilon))
        return (x * g,)


@dataclasses.dataclass(frozen=True)
class NormIdentity:
    """Relevance passes through the normalisation unchanged."""

    def __call__(self, layer, inputs, relevance):
        _needs_norm(self, layer)
        (x,) = inputs
        return (jnp.broadcast_to(relevance, x.shape).astype(x.dtype),)
