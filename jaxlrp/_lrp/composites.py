"""Composites: which rule goes to which layer.

A composite is a function ``LayerContext -> rule | None``. ``None`` means the
layer kind's default (Norm for pooling and residual sums, Pass for elementwise
activations, Gradient for shape operations and max-pooling, NormEpsilon for
normalisations, SoftmaxDTD for softmax, Uniform for products of two activations,
Gradient for a weighted layer no mapping covers, as in Zennit).

Build your own in a few lines::

    comp = jaxlrp.composites.layer_map(
        conv=rules.Gamma(0.25), dense=rules.Epsilon(1e-6),
        first=rules.ZBox(0.0, 1.0), paths={"head": rules.Epsilon(0.0)})

or any plain function ``lambda ctx: rules.ZPlus() if ctx.kind == "conv" else None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from jaxlrp._lrp import attention_rules as AR
from jaxlrp._lrp import elementwise_rules as ER
from jaxlrp._lrp import norm_rules as NR
from jaxlrp._lrp import rules as R
from jaxlrp.errors import ExplanationError


@dataclasses.dataclass(frozen=True)
class LayerContext:
    """What a composite sees of a layer.

    Attributes:
      kind: ``conv``, ``dense``, ``pool``, ``sum``, ``activation`` or ``gradient``.
      path: module path (``"features/0/conv"``), empty for the root module.
      primitive: the JAX primitive at the layer's core.
      index: position among conv/dense layers counted from the input (-1 for others).
      first: True for the first conv/dense layer reached from the input.
      first_conv: True for the first conv layer reached from the input.
      module_type: class name of the module whose call made the layer
        (``"LayerNorm"``, ``"MultiHeadAttention"``), ``""`` when unknown.
    """

    kind: str
    path: str
    primitive: str
    index: int
    first: bool
    first_conv: bool = False
    module_type: str = ""


Composite = Callable[[LayerContext], Any]

DEFAULTS = {
    "pool": R.Norm(), "sum": R.Norm(), "activation": R.Pass(), "gradient": R.Gradient(),
    "norm": NR.NormEpsilon(), "softmax": AR.SoftmaxDTD(), "product": AR.Uniform(),
}


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """Rules by layer kind, first layer, module type and module path.

    Precedence: path, then module type, then first layer, then kind.
    ``paths`` maps a module path, or a path prefix ending in ``/``-separated parts,
    to a rule. Every path must match some layer of the model, else
    :func:`jaxlrp._lrp.lrp` raises an error listing the available paths. It is stored as
    a tuple of ``(path, rule)`` pairs sorted by path, so that a LayerMap is a value
    (equal maps hash alike; it is a pytree whose array leaves, e.g. ``ZBox`` bounds, are
    passed to the compiled explainer rather than keyed on).
    ``types`` maps a module class name (``"LayerNorm"``, ``"MultiHeadAttention"``)
    to a rule, or to a ``{kind: rule}`` mapping for modules that hold several kinds
    (attention holds ``product`` and ``softmax`` nodes); it applies to the nodes whose
    own module (the innermost one) has that class. It is stored like ``paths``.
    """

    conv: Any = None
    dense: Any = None
    pool: Any = dataclasses.field(default_factory=R.Norm)
    sum: Any = dataclasses.field(default_factory=R.Norm)
    activation: Any = dataclasses.field(default_factory=R.Pass)
    gradient: Any = dataclasses.field(default_factory=R.Gradient)
    first: Any = None
    first_kinds: tuple[str, ...] = ("conv", "dense")
    paths: Mapping[str, Any] | tuple[tuple[str, Any], ...] | None = None
    norm: Any = dataclasses.field(default_factory=NR.NormEpsilon)
    softmax: Any = dataclasses.field(default_factory=AR.SoftmaxDTD)
    product: Any = dataclasses.field(default_factory=AR.Uniform)
    types: Mapping[str, Any] | tuple[tuple[str, Any], ...] | None = None

    def __post_init__(self):
        if isinstance(self.paths, Mapping):
            object.__setattr__(self, "paths", _pairs(self.paths))
        if isinstance(self.types, Mapping):
            object.__setattr__(self, "types", tuple(
                (k, _pairs(v) if isinstance(v, Mapping) else v)
                for k, v in _pairs(self.types)))
        if isinstance(self.first_kinds, list):
            object.__setattr__(self, "first_kinds", tuple(self.first_kinds))

    def __call__(self, ctx: LayerContext) -> Any:
        if self.paths:
            best = None
            for p, rule in self.paths:
                if ctx.path == p or ctx.path.startswith(p.rstrip("/") + "/"):
                    if best is None or len(p) > len(best[0]):
                        best = (p, rule)
            if best is not None:
                return best[1]
        types = dict(self.types or ())
        if ctx.module_type in types:
            rule = types[ctx.module_type]
            if not isinstance(rule, tuple):  # a rule, not (kind, rule) pairs
                return rule
            by_kind = dict(rule)
            if ctx.kind in by_kind:
                return by_kind[ctx.kind]
        if self.first is not None and ctx.kind in self.first_kinds and _is_first(ctx, self):
            return self.first
        return getattr(self, ctx.kind, None)

    def path_keys(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.paths or ())


jax.tree_util.register_dataclass(
    LayerMap,
    data_fields=["conv", "dense", "pool", "sum", "activation", "gradient", "first", "paths",
                 "norm", "softmax", "product", "types"],
    meta_fields=["first_kinds"],
)


def _pairs(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A mapping as (key, value) pairs sorted by key: a hashable, ordered value."""
    return tuple(sorted(mapping.items(), key=lambda kv: kv[0]))


def _is_first(ctx: LayerContext, comp: LayerMap) -> bool:
    if tuple(comp.first_kinds) == ("conv",):
        return ctx.first_conv
    return ctx.first


def layer_map(**kwargs: Any) -> LayerMap:
    """A :class:`LayerMap` composite; see its fields."""
    return LayerMap(**kwargs)


def epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LayerMap:
    """ZPlus on conv layers, Epsilon on dense layers (Zennit's EpsilonPlus)."""
    return LayerMap(conv=R.ZPlus(stabilizer), dense=R.Epsilon(epsilon),
                    pool=R.Norm(stabilizer), sum=R.Norm(stabilizer))


def epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LayerMap:
    """EpsilonPlus with Flat on the first conv/dense layer (Zennit's EpsilonPlusFlat)."""
    return dataclasses.replace(epsilon_plus(epsilon, stabilizer), first=R.Flat(stabilizer))


def epsilon_alpha2_beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LayerMap:
    """AlphaBeta(2, 1) on conv layers, Epsilon on dense layers (Zennit's EpsilonAlpha2Beta1)."""
    return LayerMap(conv=R.AlphaBeta(2.0, 1.0, stabilizer), dense=R.Epsilon(epsilon),
                    pool=R.Norm(stabilizer), sum=R.Norm(stabilizer))


def epsilon_alpha2_beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> LayerMap:
    """EpsilonAlpha2Beta1 with Flat on the first conv/dense layer."""
    return dataclasses.replace(epsilon_alpha2_beta1(epsilon, stabilizer), first=R.Flat(stabilizer))


def epsilon_gamma_box(
    low: Any, high: Any, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6
) -> LayerMap:
    """ZBox on the first conv, Gamma on other convs, Epsilon on dense (Zennit's EpsilonGammaBox).

    ``low``/``high`` bound the model input (scalars or arrays broadcastable to x).
    """
    return LayerMap(conv=R.Gamma(gamma, stabilizer), dense=R.Epsilon(epsilon),
                    pool=R.Norm(stabilizer), sum=R.Norm(stabilizer),
                    first=R.ZBox(low, high, stabilizer), first_kinds=("conv",))


def paper(epsilon: float = 0.0, stabilizer: float = 1e-9) -> LayerMap:
    """The hybrid paper's LRP: Alpha1-Beta0 on conv layers, Epsilon(0) on dense layers.

    The re-implementation uses Captum, whose Alpha1_Beta0 rule clamps the weights to
    their positive part and keeps the bias (:class:`~jaxlrp.rules.WPlus`); with
    inputs and biases >= 0 this equals z+. Epsilon(0) divides safely (0/0 := 0).
    """
    return LayerMap(conv=R.WPlus(stabilizer), dense=R.Epsilon(epsilon),
                    pool=R.Epsilon(stabilizer), sum=R.Norm(stabilizer))


def epsilon(eps: float = 1e-6) -> LayerMap:
    """Epsilon everywhere (conv, dense, pooling, sums, normalisations, products); ``eps=0``
    is LRP-0. Softmax passes relevance unchanged (SoftmaxIdentity), so that the composite
    conserves relevance on bias-free models (see :func:`attn_lrp` for AttnLRP's rule).

    Conservation per node kind (sum of input relevance = sum of output relevance, up to
    ``eps``; measured in float64 with eps=1e-12 by tests/test_lrp_transformer.py):

    ==========  ======================  =============================================
    kind        rule here               conserves
    ==========  ======================  =============================================
    conv/dense  Epsilon                 yes without bias (a bias keeps b R / z)
    pool, sum   Epsilon                 yes
    activation  Pass                    yes (also with constant adds)
    gradient    Gradient                yes for reshapes, slices, max-pool, gather;
                                        a concatenated constant (class token) keeps
                                        its share
    norm        NormEpsilon             yes without the affine bias (the statistics
                                        are constants, the centring is linear)
    softmax     SoftmaxIdentity         yes
    product     Uniform                 yes (each factor gets half)
    ==========  ======================  =============================================

    Not conservative elsewhere: SoftmaxDTD (AttnLRP; leaks ``sum x R - (sum y x) sum R``
    per row), SoftmaxConstant (CP-LRP; drops what reaches the softmax, which HoldConstant
    on ``A V`` makes zero), IdentityOrEpsilon on constant adds (the constant keeps its
    share), and every rule on layers with biases.
    """
    rule = R.Epsilon(eps)
    return LayerMap(conv=rule, dense=rule, pool=rule, sum=rule, norm=NR.NormEpsilon(eps),
                    softmax=AR.SoftmaxIdentity(), product=AR.Uniform(eps))


def attn_lrp(epsilon: float = 1e-6) -> LayerMap:
    """AttnLRP (Achtibat et al., ICML 2024), as LXT 2.1 implements it.

    LRP-epsilon on conv/dense layers, pooling and residual sums; the identity rule on
    elementwise nonlinearities and epsilon on elementwise affine maps (a position
    embedding absorbs its share, as in LXT's gradient x input); normalisations with their
    statistics held constant; the softmax deep-Taylor rule; the uniform rule on products
    of two activations (``Q K^T``, ``A V``, gates). ``epsilon=0`` is LXT's "efficient"
    mode exactly (it has no stabiliser).
    """
    rule = R.Epsilon(epsilon)
    return LayerMap(conv=rule, dense=rule, pool=rule, sum=rule,
                    activation=ER.IdentityOrEpsilon(epsilon), norm=NR.NormEpsilon(epsilon),
                    softmax=AR.SoftmaxDTD(), product=AR.Uniform(epsilon))


def cp_lrp(epsilon: float = 1e-6) -> LayerMap:
    """CP-LRP (Ali et al., ICML 2022): AttnLRP's rules, but attention weights and gates are
    constants (:class:`~jaxlrp._lrp.attention_rules.HoldConstant`; the softmax gets no
    relevance), so ``A V`` sends all relevance to the values, as LXT's ``cp_LRP`` maps."""
    rule = R.Epsilon(epsilon)
    return LayerMap(conv=rule, dense=rule, pool=rule, sum=rule,
                    activation=ER.IdentityOrEpsilon(epsilon), norm=NR.NormEpsilon(epsilon),
                    softmax=AR.SoftmaxConstant(), product=AR.HoldConstant(epsilon=epsilon))


PRESETS = {
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
    "paper": paper,
    "epsilon": epsilon,
    "attn_lrp": attn_lrp,
    "cp_lrp": cp_lrp,
}


def get(name_or_composite: Any) -> Composite:
    """Resolve a composite: a callable, a preset name, or None (the paper's composite)."""
    if name_or_composite is None:
        return paper()
    if isinstance(name_or_composite, str):
        if name_or_composite not in PRESETS:
            raise ExplanationError(
                f"composite: unknown preset {name_or_composite!r}; expected one of "
                f"{sorted(PRESETS)} or a function LayerContext -> rule"
            )
        return PRESETS[name_or_composite]()
    if not callable(name_or_composite):
        raise ExplanationError(
            f"composite: expected a callable LayerContext -> rule or a preset name, got "
            f"{type(name_or_composite).__name__}"
        )
    return name_or_composite
