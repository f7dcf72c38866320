"""LRP rules: how relevance at a layer's output is redistributed to its inputs.

Notation, for a layer with inputs ``x_i``, weights ``w_ij``, bias ``b_j`` and
output ``z_j = sum_i x_i w_ij + b_j``; ``R_j`` is the output relevance and
``stab(z) = z + eps * sign(z)`` (sign(0) = +1, as in Zennit). ``x+ = max(x, 0)``,
``x- = min(x, 0)``, likewise for weights and biases.

===================  =======================================================================
rule                 input relevance ``R_i``
===================  =======================================================================
Epsilon(eps)         ``x_i sum_j w_ij R_j / stab(z_j)``; eps=0 is LRP-0 (0/0 := 0)
ZPlus                ``sum_j (x+_i w+_ij + x-_i w-_ij) R_j / stab(z+_j)``,
                     ``z+ = W+ x+ + W- x- + b+``
AlphaBeta(a, b)      ``a * (positive part as ZPlus) - b * (negative part)``, ``a - b = 1``
Gamma(g)             ZPlus-like with ``w + g w+`` where the output is positive and
                     ``w + g w-`` where it is negative (Zennit's generalised Gamma)
ZBox(low, high)      ``(x_i w_ij - l_i w+_ij - h_i w-_ij) R_j / stab(z_j - l W+ - h W-)``
WSquare              ``sum_j w_ij^2 R_j / stab(sum_i w_ij^2 + b_j^2)``
Flat                 ``sum_j R_j / stab(sum_i 1)`` over the layer's receptive field
WPlus(eps)           ``x_i sum_j w+_ij R_j / stab(W+ x + b)`` (Captum's Alpha1_Beta0_Rule)
Norm                 ``x_i dz_j/dx_i R_j / stab(z_j)`` for weightless sums (pooling, residual)
Pass                 ``R`` unchanged (elementwise activations)
Gradient             ``(dz/dx)^T R`` (max-pool, reshapes, concatenation)
===================  =======================================================================

Each rule is a small frozen dataclass whose ``__call__(layer, inputs, R)``
returns the input relevances. The ``layer`` is a :class:`LinearLayer` (conv,
dense) or a :class:`FunctionLayer` (everything else).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp.errors import ExplanationError

Array = jax.Array


# ----------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    """An affine layer ``z = core(x, weight) + bias`` (conv or dense, folded).

    Attributes:
      kind: ``"conv"`` or ``"dense"``.
      path: module path of the layer.
      core: ``core(x, w) -> z``, linear in ``x`` and in ``w``.
      weight: the (folded) weight, in the layout ``core`` expects.
      bias: the (folded) bias, broadcastable to ``z``.
      transpose_core: optional ``(weight, g, like) -> core(., weight)^T g``, when the
        layer knows a faster form than ``jax.vjp`` of ``core`` (convolutions:
        :mod:`jaxlrp._lrp.conv_transpose`).
    """

    kind: str
    path: str
    core: Callable[[Array, Array], Array]
    weight: Array
    bias: Array
    transpose_core: Callable[[Array, Array, Array], Array] | None = None

    def __call__(self, x: Array, weight: Array | None = None, bias: Array | None = None) -> Array:
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        return self.core(x, w) + b

    def transpose(self, weight: Array, g: Array, like: Array) -> Array:
        """``core(., weight)^T g``: the gradient of ``<core(x, weight), g>`` w.r.t. x."""
        if self.transpose_core is not None:
            return self.transpose_core(weight, g, like)
        _, vjp = jax.vjp(lambda x: self.core(x, weight), like)
        return vjp(g)[0]


@dataclasses.dataclass(frozen=True)
class FunctionLayer:
    """A layer given only as a function of its activation inputs.

    Attributes:
      kind: ``pool``, ``sum``, ``activation``, ``gradient``, ``norm`` or ``softmax``.
      path: module path.
      fn: ``fn(*inputs) -> output`` or a tuple of outputs (for ``norm``: with the
        statistics held at their forward values).
      affine: True when ``fn`` only adds, subtracts, multiplies or divides by constants.
    """

    kind: str
    path: str
    fn: Callable[..., Any]
    affine: bool = False


# ----------------------------------------------------------------------------- helpers


def stabilize(z: Array, eps: float) -> Array:
    """``z + eps * sign(z)`` with sign(0) = +1 (Zennit's convention)."""
    return z + jnp.where(z >= 0, eps, -eps).astype(z.dtype)


def divide(r: Array, z: Array, eps: float) -> Array:
    """``r / stab(z)``; with ``eps == 0`` a safe division where 0 denominators give 0."""
    if eps > 0:
        return r / stabilize(z, eps)
    zero = z == 0
    return jnp.where(zero, 0.0, r / jnp.where(zero, 1.0, z))


def _pos(a: Array) -> Array:
    return jnp.maximum(a, 0)


def _neg(a: Array) -> Array:
    return jnp.minimum(a, 0)


def _needs_linear(rule: Any, layer: Any) -> LinearLayer:
    if not isinstance(layer, LinearLayer):
        raise ExplanationError(
            f"composite: rule {type(rule).__name__} needs a layer with weights (conv or dense), "
            f"but was assigned to a '{layer.kind}' layer at '{layer.path or '<root>'}'"
        )
    return layer


def _check_eps(name: str, value: float) -> float:
    v = float(value)
    if not v >= 0:
        raise ExplanationError(f"{name}: expected a number >= 0, got {value!r}")
    return v


# ----------------------------------------------------------------------------- weight rules


@dataclasses.dataclass(frozen=True)
class Epsilon:
    """LRP-epsilon; ``epsilon=0`` is LRP-0. Works on weighted and weightless layers."""

    epsilon: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self):
        _check_eps("epsilon", self.epsilon)

    def __call__(self, layer, inputs, relevance):
        if isinstance(layer, LinearLayer):
            (x,) = inputs
            bias = jnp.zeros_like(layer.bias) if self.zero_bias else layer.bias
            z = layer(x, bias=bias)
            return (x * layer.transpose(layer.weight, divide(relevance, z, self.epsilon), x),)
        return _norm(layer, inputs, relevance, self.epsilon)


@dataclasses.dataclass(frozen=True)
class Norm:
    """Proportional redistribution for weightless sums: pooling, means, residual adds."""

    stabilizer: float = 1e-6

    def __call__(self, layer, inputs, relevance):
        return _norm(layer, inputs, relevance, self.stabilizer)


def _norm(layer, inputs, relevance, eps):
    fn = layer if isinstance(layer, LinearLayer) else layer.fn
    z, vjp = jax.vjp(fn, *inputs)
    grads = vjp(divide(relevance, z, eps))
    return tuple(x * g for x, g in zip(inputs, grads, strict=True))


@dataclasses.dataclass(frozen=True)
class AlphaBeta:
    """LRP-alpha-beta (Zennit semantics): alpha >= 0, beta >= 0, alpha - beta = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0:
            raise ExplanationError(
                f"AlphaBeta: alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}"
            )
        if abs((self.alpha - self.beta) - 1.0) > 1e-12:
            raise ExplanationError(
                f"AlphaBeta: alpha - beta must equal 1 (relevance conservation), got "
                f"alpha={self.alpha}, beta={self.beta}"
            )

    def __call__(self, layer, inputs, relevance):
        layer = _needs_linear(self, layer)
        (x,) = inputs
        w, b = layer.weight, layer.bias
        xp, xn = _pos(x), _neg(x)
        wp, wn = _pos(w), _neg(w)
        out_p = layer(xp, wp, _pos(b)) + layer.core(xn, wn)
        gp = divide(relevance, out_p, self.stabilizer)
        r = self.alpha * (xp * layer.transpose(wp, gp, x) + xn * layer.transpose(wn, gp, x))
        if self.beta:
            out_n = layer(xp, wn, _neg(b)) + layer.core(xn, wp)
            gn = divide(relevance, out_n, self.stabilizer)
            r = r - self.beta * (
                xp * layer.transpose(wn, gn, x) + xn * layer.transpose(wp, gn, x)
            )
        return (r,)


@dataclasses.dataclass(frozen=True)
class ZPlus:
    """LRP-z+ (AlphaBeta(1, 0)): only positive contributions, negative inputs allowed."""

    stabilizer: float = 1e-6

    def __call__(self, layer, inputs, relevance):
        _needs_linear(self, layer)
        return AlphaBeta(1.0, 0.0, self.stabilizer)(layer, inputs, relevance)


def Alpha1Beta0(stabilizer: float = 1e-6) -> AlphaBeta:  # noqa: N802 - rule constructor
    """AlphaBeta(alpha=1, beta=0), the same as :class:`ZPlus`."""
    return AlphaBeta(1.0, 0.0, stabilizer)


def Alpha2Beta1(stabilizer: float = 1e-6) -> AlphaBeta:  # noqa: N802 - rule constructor
    """AlphaBeta(alpha=2, beta=1)."""
    return AlphaBeta(2.0, 1.0, stabilizer)


@dataclasses.dataclass(frozen=True)
class WPlus:
    """Positive weights, original bias, unsplit inputs: ``z = W+ x + b``.

    This is Captum's ``Alpha1_Beta0_Rule`` (which clamps weights, keeps the bias and
    stabilises with 1e-9). It equals :class:`ZPlus` when inputs and biases are >= 0.
    """

    stabilizer: float = 1e-9

    def __call__(self, layer, inputs, relevance):
        layer = _needs_linear(self, layer)
        (x,) = inputs
        wp = _pos(layer.weight)
        z = layer(x, wp)
        return (x * layer.transpose(wp, divide(relevance, z, self.stabilizer), x),)


@dataclasses.dataclass(frozen=True)
class Gamma:
    """LRP-gamma, generalised to signed inputs as in Zennit (gamma >= 0)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps("gamma", self.gamma)

    def __call__(self, layer, inputs, relevance):
        layer = _needs_linear(self, layer)
        (x,) = inputs
        w, b = layer.weight, layer.bias
        g = self.gamma
        xp, xn = _pos(x), _neg(x)
        w_up, w_dn = w + g * _pos(w), w + g * _neg(w)
        b_up, b_dn = b + g * _pos(b), b + g * _neg(b)
        z = layer(x)
        out0 = layer(xp, w_up, b_up) + layer.core(xn, w_dn)
        out2 = layer(xp, w_dn, b_dn) + layer.core(xn, w_up)
        g_pos = jnp.where(z > 0, divide(relevance, out0, self.stabilizer), 0.0)
        g_neg = jnp.where(z < 0, divide(relevance, out2, self.stabilizer), 0.0)
        r = (
            xp * layer.transpose(w_up, g_pos, x)
            + xn * layer.transpose(w_dn, g_pos, x)
            + xp * layer.transpose(w_dn, g_neg, x)
            + xn * layer.transpose(w_up, g_neg, x)
        )
        return (r,)


@dataclasses.dataclass(frozen=True)
class ZBox:
    """LRP-z^B for bounded inputs ``low <= x <= high`` (first layer). Bounds broadcast to x."""

    low: Any = None
    high: Any = None
    stabilizer: float = 1e-6

    def __post_init__(self):
        if self.low is None or self.high is None:
            raise ExplanationError(
                "ZBox: needs both bounds low and high of the input, e.g. ZBox(low=0.0, high=1.0) "
                "or per-channel arrays for normalised inputs"
            )

    def __call__(self, layer, inputs, relevance):
        layer = _needs_linear(self, layer)
        (x,) = inputs
        w, b = layer.weight, layer.bias
        low = jnp.broadcast_to(jnp.asarray(self.low, x.dtype), x.shape)
        high = jnp.broadcast_to(jnp.asarray(self.high, x.dtype), x.shape)
        wp, wn = _pos(w), _neg(w)
        out = layer(x) - layer(low, wp, _pos(b)) - layer(high, wn, _neg(b))
        g = divide(relevance, out, self.stabilizer)
        r = (
            x * layer.transpose(w, g, x)
            - low * layer.transpose(wp, g, x)
            - high * layer.transpose(wn, g, x)
        )
        return (r,)


# a pytree: array bounds are leaves (arguments of a compiled explainer, not cache keys)
jax.tree_util.register_dataclass(ZBox, data_fields=["low", "high"], meta_fields=["stabilizer"])


@dataclasses.dataclass(frozen=True)
class WSquare:
    """LRP-w^2: redistribute by squared weights, independent of the input values."""

    stabilizer: float = 1e-6

    def __call__(self, layer, inputs, relevance):
        layer = _needs_linear(self, layer)
        (x,) = inputs
        w2 = layer.weight**2
        ones = jnp.ones_like(x)
        out = layer(ones, w2, layer.bias**2)
        return (layer.transpose(w2, divide(relevance, out, self.stabilizer), x),)


@dataclasses.dataclass(frozen=True)
class Flat:
    """LRP-flat: redistribute uniformly over each output's receptive field."""

    stabilizer: float = 1e-6

    def __call__(self, layer, inputs, relevance):
        layer = _needs_linear(self, layer)
        (x,) = inputs
        w1 = jnp.ones_like(layer.weight)
        out = layer.core(jnp.ones_like(x), w1)
        return (layer.transpose(w1, divide(relevance, out, self.stabilizer), x),)


# ----------------------------------------------------------------------------- non-weight rules


@dataclasses.dataclass(frozen=True)
class Pass:
    """Pass relevance through an elementwise layer unchanged (summed over its outputs)."""

    def __call__(self, layer, inputs, relevance):
        rs = relevance if isinstance(relevance, tuple) else (relevance,)
        (x,) = inputs
        total = sum(jnp.broadcast_to(r, x.shape) for r in rs)
        return (total,)


@dataclasses.dataclass(frozen=True)
class Gradient:
    """Propagate relevance with the layer's vector-Jacobian product (max-pool, reshapes)."""

    def __call__(self, layer, inputs, relevance):
        fn = layer if isinstance(layer, LinearLayer) else layer.fn
        _, vjp = jax.vjp(fn, *inputs)
        return tuple(vjp(relevance))


Rule = Callable[[Any, tuple, Any], tuple]
