"""AttnLRP's treatment of elementwise layers: identity on nonlinearities, epsilon on affine ones.

An ``activation`` node is a chain of elementwise equations on one activation. AttnLRP
(Achtibat et al. 2024, Eq. 9) and LXT pass relevance unchanged through elementwise
nonlinearities (GELU, SiLU, exp, ...), while an add of a constant (a position
embedding, a bias that no layer absorbed) is part of the linear map, where LRP-epsilon
gives the constant its share. ``stab(z) = z + eps * sign(z)``.

======================  =======================================  ============================
rule                    input relevance ``R_x``                  conserves
======================  =======================================  ============================
IdentityOrEpsilon(eps)  affine chain (``+ c``, ``* c``, ``/ c``): affine: no with ``c != 0``
                        ``x * J^T (R / stab(y))``; otherwise     (``c`` absorbs ``c R / y``);
                        ``R`` (the identity rule)                nonlinear: yes
======================  =======================================  ============================

:class:`jaxlrp.rules.Pass` is the identity everywhere (conservative).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlrp._lrp.rules import Pass, _check_eps, divide


@dataclasses.dataclass(frozen=True)
class IdentityOrEpsilon:
    """Identity on elementwise nonlinearities, LRP-epsilon on affine elementwise chains."""

    epsilon: float = 0.0

    def __post_init__(self):
        _check_eps("epsilon", self.epsilon)

    def __call__(self, layer, inputs, relevance):
        if not getattr(layer, "affine", False) or isinstance(relevance, tuple):
            return Pass()(layer, inputs, relevance)
        (x,) = inputs
        y, vjp = jax.vjp(layer.fn, x)
        (g,) = vjp(divide(relevance, y, self.epsilon))
        return ((x * jnp.broadcast_to(g, x.shape)).astype(x.dtype),)
