"""LRP rules for attention: products of two activations, and softmax.

A ``product`` node multiplies two activations: ``dot_general`` (``Q K^T``, ``A V``),
``a * b`` (gates such as ``a * sigmoid(b)``, split attention, squeeze-excitation) or
``a / b``. Its output ``out = B(f_1, f_2)`` is bilinear in its *factors* ``f_k``: the
operands themselves, except that the divisor of ``a / b`` enters as ``f = 1/b`` and
passes its relevance to ``b`` unchanged (AttnLRP's identity rule on the elementwise
``1/b``). ``J_k = d out / d f_k`` with the other factor fixed,
``stab(z) = z + eps * sign(z)``; ``eps = 0`` divides safely (0/0 := 0). A ``softmax``
node computes ``y = softmax(x)`` along one axis.

==================  ==================================================  =====================
rule                input relevance                                     conserves
==================  ==================================================  =====================
Uniform(eps)        ``R_k = f_k * J_k^T (R / stab(out)) / n``, n = 2:   yes (each operand gets
                    AttnLRP's uniform rule (Achtibat et al. 2024,      half), up to eps
                    Prop. 3.2/3.3; LXT ``mul2``/``matmul``);
                    elementwise ``a * b``: ``R_a = R_b = R / 2``
HoldConstant(eps)   factors made by a node of a kind in ``kinds``       yes, up to eps
                    (default ``softmax``, ``activation``: attention
                    weights, gates) are constants and get 0; the
                    free factor gets ``f * J^T (R / stab(out))``
                    (CP-LRP, Ali et al. 2022; LXT's ``stop_gradient``).
                    If no factor or every factor is of such a kind:
                    Uniform
SoftmaxDTD()        ``R_x = x * (R - y * sum_axis R)``                  no: per row,
                    ``= x * J^T (R / y)``: AttnLRP Prop. 3.1, LXT       ``sum R_x = sum x R -
                    ``softmax`` (deep Taylor at x, with bias);          (sum y x) sum R``
                    non-finite (masked) logits get 0
SoftmaxIdentity()   ``R_x = R`` (identity rule on ``exp``, the          yes
                    denominator held constant)
SoftmaxConstant()   ``R_x = 0``: attention weights are constants        no (drops R; use with
                    (CP-LRP); relevance goes through ``A V`` to V       HoldConstant on A V)
==================  ==================================================  =====================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp._lrp.rules import _check_eps, divide
from jaxlrp.errors import ExplanationError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ProductLayer:
    """A product of activations ``out = fn(*inputs)``, bilinear in its factors.

    Attributes:
      kind: ``"product"``.
      path: module path.
      fn: the model's equation, ``fn(*inputs) -> out``.
      bilinear: ``bilinear(*factors) -> out`` (``a * f`` for ``a / b``).
      inverse: per input, whether it enters as ``1 / input`` (the divisor of ``div``).
      operand_kinds: per input, the kind of the node that made it (shape operations
        looked through), e.g. ``("softmax", "dense")`` for ``A V``.
    """

    kind: str
    path: str
    fn: Callable[..., Array]
    bilinear: Callable[..., Array]
    inverse: tuple[bool, ...]
    operand_kinds: tuple[str, ...]

    def factors(self, inputs: tuple) -> tuple:
        return tuple(1 / x if inv else x for x, inv in zip(inputs, self.inverse, strict=True))


def _needs_product(rule: Any, layer: Any) -> ProductLayer:
    if not isinstance(layer, ProductLayer):
        raise ExplanationError(
            f"composite: rule {type(rule).__name__} needs a product of two activations, but "
            f"was assigned to a '{layer.kind}' layer at '{layer.path or '<root>'}'"
        )
    return layer


def _needs_kind(rule: Any, layer: Any, kind: str) -> None:
    if getattr(layer, "kind", None) != kind:
        raise ExplanationError(
            f"composite: rule {type(rule).__name__} needs a '{kind}' layer, but was assigned "
            f"to a '{layer.kind}' layer at '{layer.path or '<root>'}'"
        )


def _shares(layer: ProductLayer, inputs: tuple, relevance: Array, eps: float,
            free: tuple[bool, ...]) -> tuple:
    f = layer.factors(inputs)
    out, vjp = jax.vjp(layer.bilinear, *f)
    grads = vjp(divide(relevance, out, eps))
    m = sum(free)
    return tuple(
        (fk * gk / m).astype(x.dtype) if keep else jnp.zeros_like(x)
        for x, fk, gk, keep in zip(inputs, f, grads, free, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class Uniform:
    """AttnLRP's uniform rule: each of the n factors gets ``1/n`` of the relevance."""

    epsilon: float = 0.0

    def __post_init__(self):
        _check_eps("epsilon", self.epsilon)

    def __call__(self, layer, inputs, relevance):
        layer = _needs_product(self, layer)
        return _shares(layer, inputs, relevance, self.epsilon, (True,) * len(inputs))


@dataclasses.dataclass(frozen=True)
class HoldConstant:
    """CP-LRP: factors made by a node of a kind in ``kinds`` are constants."""

    kinds: tuple[str, ...] = ("softmax", "activation")
    epsilon: float = 0.0

    def __post_init__(self):
        _check_eps("epsilon", self.epsilon)

    def __call__(self, layer, inputs, relevance):
        layer = _needs_product(self, layer)
        free = tuple(k not in self.kinds for k in layer.operand_kinds)
        if all(free) or not any(free):
            free = (True,) * len(inputs)
        return _shares(layer, inputs, relevance, self.epsilon, free)


@dataclasses.dataclass(frozen=True)
class SoftmaxDTD:
    """AttnLRP's softmax rule ``R_x = x * (R - y * sum R)`` (not conservative)."""

    def __call__(self, layer, inputs, relevance):
        _needs_kind(self, layer, "softmax")
        (x,) = inputs
        y, vjp = jax.vjp(layer.fn, x)
        (g,) = vjp(divide(relevance, y, 0.0))
        return (jnp.where(jnp.isfinite(x), x, 0.0).astype(x.dtype) * g,)


@dataclasses.dataclass(frozen=True)
class SoftmaxIdentity:
    """Relevance passes through the softmax unchanged (conservative)."""

    def __call__(self, layer, inputs, relevance):
        _needs_kind(self, layer, "softmax")
        (x,) = inputs
        return (jnp.broadcast_to(relevance, x.shape).astype(x.dtype),)


@dataclasses.dataclass(frozen=True)
class SoftmaxConstant:
    """CP-LRP: attention weights are constants, no relevance reaches the logits."""

    def __call__(self, layer, inputs, relevance):
        _needs_kind(self, layer, "softmax")
        (x,) = inputs
        return (jnp.zeros_like(x),)
