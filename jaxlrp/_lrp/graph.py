"""The model as a graph of LRP layers, read from its jaxpr.

A model is traced once with :func:`jax.make_jaxpr` (module paths recorded in
each equation's name stack, see :mod:`jaxlrp._tracing`). Call-like equations
(``jit``, ``custom_jvp_call``, ...) are inlined, values are split into
*activations* (depending on the input image) and *constants* (parameters,
literals), and the equations on the activation path are grouped into nodes:

=============  ===========================================================  ==============
kind           equations                                                    default rule
=============  ===========================================================  ==============
``conv``       ``conv_general_dilated`` (activation * constant kernel)      composite
``dense``      ``dot_general`` (activation * constant matrix)               composite
``pool``       ``reduce_sum``, ``reduce_window_sum`` (mean, avg-pool)       Norm
``sum``        ``add``/``sub`` of activations from different sources       Norm
``activation`` elementwise functions of one activation (ReLU, ReLU6, ...)   Pass
``gradient``   reshape, transpose, max-pool, concat, pad, slice, gather     Gradient
``norm``       LayerNorm/GroupNorm/RMSNorm/... (statistics, centring,       NormEpsilon
               scale, bias; see :mod:`jaxlrp._lrp.patterns`)
``softmax``    ``exp(x - c) / sum(exp(x - c))``                             SoftmaxDTD
``product``    two activations multiplied: ``dot_general`` (Q K^T, A V),   Uniform
               ``a * b``, ``a / b`` (gates)
=============  ===========================================================  ==============

``stop_gradient`` ends the activation path: what it returns is a constant for LRP.
Upsampling with ``jax.image.resize`` is a ``dense`` node (a constant interpolation
matrix, "linear"/"cubic") or a ``gradient`` node (``gather``, "nearest"); a transposed
convolution is a ``conv`` node (``conv_general_dilated`` with ``lhs_dilation``).

Canonizers (:mod:`jaxlrp.canonizers`) then rewrite the node list, for
example folding BatchNorm's affine equations into the preceding conv.
Anything else on the activation path raises
:class:`~jaxlrp.errors.UnsupportedOperationError` naming the primitive and the
module path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxlrp._lrp import patterns, pooling

# ----------------------------------------------------------------------------- primitives
from jaxlrp._lrp.primitives import (  # noqa: F401 - re-exported for the rewrites
    _CALL_PARAMS,
    _CALL_PRIMS,
    AFFINE,
    ELEMENTWISE,
    GRADIENT,
    JOIN,
    LINEAR_CORE,
    POOL_CORE,
    SUPPORTED,
)
from jaxlrp.errors import UnsupportedOperationError

# ----------------------------------------------------------------------------- flat equations


@dataclasses.dataclass
class Eqn:
    """One primitive application, with integer value ids.

    ``ins`` holds ints (value ids) or :class:`Lit` for literals.
    """

    prim: Any
    params: dict
    ins: list
    outs: list[int]
    path: str

    @property
    def name(self) -> str:
        return self.prim.name


@dataclasses.dataclass(frozen=True)
class Lit:
    value: Any


def _join_path(a: str, b: str) -> str:
    return "/".join(p for p in (a, b) if p)


def _clean_stack(stack: Any) -> str:
    parts = [p for p in str(stack).split("/") if p and "(" not in p]
    return "/".join(parts)


def flatten(
    closed: jcore.ClosedJaxpr, n_inputs: int
) -> tuple[list[Eqn], list[int], dict, list, dict]:
    """Inline call-like equations of ``closed`` into a flat equation list.

    Returns:
      (eqns, input ids, const values by id, output refs, shape of every id).
    """
    counter = [0]
    consts: dict[int, Any] = {}
    shapes: dict[int, tuple] = {}

    def fresh(shape: tuple = ()) -> int:
        counter[0] += 1
        shapes[counter[0]] = tuple(shape)
        return counter[0]

    eqns: list[Eqn] = []

    def walk(jaxpr: jcore.Jaxpr, env: dict, prefix: str) -> list:
        def read(v):
            if isinstance(v, jcore.Literal):
                return Lit(v.val)
            return env[v]

        for e in jaxpr.eqns:
            ins = [read(v) for v in e.invars]
            path = _join_path(prefix, _clean_stack(e.source_info.name_stack))
            sub = None
            if e.primitive.name in _CALL_PRIMS:
                for key in _CALL_PARAMS:
                    if key in e.params:
                        sub = e.params[key]
                        break
            if sub is not None:
                if isinstance(sub, jcore.ClosedJaxpr):
                    sub_jaxpr, sub_consts = sub.jaxpr, sub.consts
                else:
                    sub_jaxpr, sub_consts = sub, ()
                sub_env = {}
                for v, c in zip(sub_jaxpr.constvars, sub_consts, strict=True):
                    i = fresh(jnp.shape(c))
                    consts[i] = c
                    sub_env[v] = i
                for v, a in zip(sub_jaxpr.invars, ins, strict=True):
                    if isinstance(a, Lit):
                        i = fresh(jnp.shape(a.value))
                        consts[i] = a.value
                        a = i
                    sub_env[v] = a
                outs = walk(sub_jaxpr, sub_env, path)
                for v, o in zip(e.outvars, outs, strict=True):
                    if isinstance(o, Lit):
                        i = fresh(jnp.shape(o.value))
                        consts[i] = o.value
                        o = i
                    env[v] = o
                continue
            outs = []
            for v in e.outvars:
                i = fresh(getattr(v.aval, "shape", ()))
                env[v] = i
                outs.append(i)
            eqns.append(Eqn(e.primitive, dict(e.params), ins, outs, path))
        return [read(v) for v in jaxpr.outvars]

    env: dict = {}
    for v, c in zip(closed.jaxpr.constvars, closed.consts, strict=True):
        i = fresh(jnp.shape(c))
        consts[i] = c
        env[v] = i
    in_ids = []
    for v in closed.jaxpr.invars:
        i = fresh(getattr(v.aval, "shape", ()))
        env[v] = i
        in_ids.append(i)
    assert len(in_ids) == n_inputs
    outs = walk(closed.jaxpr, env, "")
    return eqns, in_ids, consts, outs, shapes


def evaluate(eqns: Sequence[Eqn], env: dict[int, Any]) -> dict[int, Any]:
    """Run ``eqns`` in order, reading and writing ``env`` (id -> value).

    ``reduce_window_max`` runs as :func:`jaxlrp._lrp.pooling.window_max`: the same
    values, and a derivative that is the same (ties included) but much faster.
    """
    for e in eqns:
        vals = [a.value if isinstance(a, Lit) else env[a] for a in e.ins]
        if e.name == "reduce_window_max" and pooling.supported(e.params):
            env[e.outs[0]] = pooling.window_max(*vals, **e.params)
            continue
        out = e.prim.bind(*vals, **e.params)
        if e.prim.multiple_results:
            for i, o in zip(e.outs, out, strict=True):
                env[i] = o
        else:
            env[e.outs[0]] = out
    return env


# ----------------------------------------------------------------------------- nodes


@dataclasses.dataclass
class Node:
    """A group of equations that one LRP rule handles.

    Attributes:
      kind: ``conv``, ``dense``, ``pool``, ``sum``, ``activation``, ``gradient``,
        ``norm``, ``softmax`` or ``product``.
      eqns: the node's equations, in order.
      ins: activation ids entering the node.
      outs: activation ids leaving the node (used after it).
      path: module path of the node's first equation.
      core: for conv/dense/pool, the linear equation; ``post`` follows it.
      post: elementwise affine equations folded after ``core`` (bias, BatchNorm).
      hold: for ``norm``, the statistic ids held at their forward value.
      lin: for ``norm``, the equations mapping the input to the output with ``hold`` fixed.
    """

    kind: str
    eqns: list[Eqn]
    ins: list[int]
    outs: list[int]
    path: str
    core: Eqn | None = None
    post: list[Eqn] = dataclasses.field(default_factory=list)
    index: int = -1
    first: bool = False
    hold: list[int] = dataclasses.field(default_factory=list)
    lin: list[Eqn] = dataclasses.field(default_factory=list)

    @property
    def primitive(self) -> str:
        return (self.core or self.eqns[0]).name

    def order(self, position: dict[int, int]) -> int:
        return max(position[id(e)] for e in self.eqns)


@dataclasses.dataclass
class Graph:
    """Flat equations plus the LRP nodes over them."""

    eqns: list[Eqn]
    in_ids: list[int]
    x_id: int
    out_id: int
    consts: dict[int, Any]
    nodes: list[Node]
    act: set[int]
    shapes: dict[int, tuple]
    types: dict[str, str] = dataclasses.field(default_factory=dict)

    def consumers(self) -> dict[int, list[Eqn]]:
        users: dict[int, list[Eqn]] = {}
        for e in self.eqns:
            for a in e.ins:
                if isinstance(a, int):
                    users.setdefault(a, []).append(e)
        return users


def _act_inputs(e: Eqn, act: set[int]) -> list[int]:
    return [a for a in e.ins if isinstance(a, int) and a in act]


def build(
    eqns: list[Eqn], in_ids: list[int], x_id: int, out_id: int, consts: dict, shapes: dict
) -> Graph:
    """Group the activation-path equations into nodes (see module docstring)."""
    act: set[int] = {x_id}
    for e in eqns:
        if e.name != "stop_gradient" and _act_inputs(e, act):
            act.update(e.outs)

    regions = patterns.find(eqns, act, _combining(eqns, act, x_id))
    region_at = {max(r.eqns): r for r in regions}
    claimed = {i for r in regions for i in r.eqns}

    source: dict[int, frozenset[int]] = {x_id: frozenset([x_id])}
    nodes: list[Node] = []
    elementwise: dict[int, list[Eqn]] = {}  # source id -> its elementwise equations

    def single(kind: str, e: Eqn, core: Eqn | None = None) -> None:
        ins = list(dict.fromkeys(_act_inputs(e, act)))
        nodes.append(Node(kind, [e], ins, list(e.outs), e.path, core=core))
        for o in e.outs:
            source[o] = frozenset([o])

    for i, e in enumerate(eqns):
        if i in region_at:
            r = region_at[i]
            core = eqns[r.core]
            nodes.append(Node(
                r.kind, [eqns[j] for j in r.eqns], list(r.ins), [r.out], core.path, core=core,
                hold=list(r.hold), lin=[eqns[j] for j in r.lin],
            ))
            source[r.out] = frozenset([r.out])
            continue
        ins = _act_inputs(e, act)
        if not ins or i in claimed or e.name == "stop_gradient":
            continue
        name = e.name
        where = f"at module path '{e.path or '<root>'}'"
        if name in LINEAR_CORE:
            if len(ins) != 1 or len(e.ins) != 2:
                raise UnsupportedOperationError(
                    f"'{name}' with {len(ins)} activation operands ({where}) is not supported; "
                    f"jaxlrp's LRP supports {SUPPORTED}"
                )
            single("conv" if name == "conv_general_dilated" else "dense", e, core=e)
        elif name in POOL_CORE:
            single("pool", e, core=e)
        elif name == "gather" and (len(ins) != 1 or e.ins[0] not in act):
            raise UnsupportedOperationError(
                f"'gather' with activation-dependent indices ({where}) is not supported "
                f"(only constant indices, e.g. nearest-neighbour resizing); jaxlrp's LRP "
                f"supports {SUPPORTED}"
            )
        elif name in GRADIENT:
            single("gradient", e)
        elif name in ELEMENTWISE:
            srcs = frozenset().union(*(source[a] for a in ins))
            if len(srcs) >= 2 and name in JOIN:
                single("sum", e)
            elif len(srcs) >= 2:
                raise UnsupportedOperationError(
                    f"'{name}' of two different activations ({where}) has no LRP rule; "
                    f"jaxlrp's LRP supports {SUPPORTED}"
                )
            else:
                (s,) = srcs
                for o in e.outs:
                    source[o] = srcs
                elementwise.setdefault(s, []).append(e)
        else:
            raise UnsupportedOperationError(
                f"unsupported operation '{name}' on the activation path {where}; "
                f"jaxlrp's LRP supports {SUPPORTED}"
            )

    graph = Graph(eqns, in_ids, x_id, out_id, consts, nodes, act, shapes)
    users = graph.consumers()
    for s, group in elementwise.items():
        ids = {o for e in group for o in e.outs}
        group_set = {id(e) for e in group}
        outs = sorted(
            o for o in ids
            if o == out_id or any(id(u) not in group_set for u in users.get(o, []))
        )
        nodes.append(Node("activation", group, [s], outs, group[0].path))
    _sort(graph)
    return graph


def _combining(eqns: Sequence[Eqn], act: set[int], x_id: int) -> list[int]:
    """Indices of equations that multiply two activations of different elementwise groups."""
    source: dict[int, frozenset[int]] = {x_id: frozenset([x_id])}
    found = []
    for i, e in enumerate(eqns):
        ins = _act_inputs(e, act)
        if not ins or e.name == "stop_gradient":
            continue
        srcs = frozenset().union(*(source.get(a, frozenset([a])) for a in ins))
        if e.name in LINEAR_CORE and len(ins) == 2:
            found.append(i)
        elif e.name in ("mul", "div") and len(srcs) >= 2:
            found.append(i)
        elif e.name in ELEMENTWISE and len(srcs) < 2:
            for o in e.outs:
                source[o] = srcs
            continue
        for o in e.outs:
            source[o] = frozenset([o])
    return found


def sort_nodes(graph: Graph) -> None:
    """Order nodes by their last equation and number the conv/dense layers."""
    _sort(graph)


def _sort(graph: Graph) -> None:
    position = {id(e): i for i, e in enumerate(graph.eqns)}
    graph.nodes.sort(key=lambda n: n.order(position))
    linear = [n for n in graph.nodes if n.kind in ("conv", "dense")]
    for i, n in enumerate(linear):
        n.index = i
        n.first = i == 0


def feature_axis(node: Node, graph: Graph) -> int | None:
    """Output axis that indexes the layer's output features, or None if unknown."""
    core = node.core
    if core is None:
        return None
    if core.name == "conv_general_dilated":
        return core.params["dimension_numbers"].out_spec[1]
    if core.name == "dot_general":
        (lc, rc), (lb, rb) = core.params["dimension_numbers"]
        x_is_lhs = core.ins[0] in graph.act if isinstance(core.ins[0], int) else False
        lhs_rank = len(graph.shapes[core.ins[0]]) if isinstance(core.ins[0], int) else 0
        rhs_rank = len(graph.shapes[core.ins[1]]) if isinstance(core.ins[1], int) else 0
        lhs_free = [d for d in range(lhs_rank) if d not in lc and d not in lb]
        rhs_free = [d for d in range(rhs_rank) if d not in rc and d not in rb]
        w_free = rhs_free if x_is_lhs else lhs_free
        if len(w_free) != 1:
            return None
        nb = len(lb)
        return nb + len(lhs_free) if x_is_lhs else nb
    return None


def trace(apply: Callable, params: Any, x: jax.Array) -> tuple[Graph, Any]:
    """Trace ``apply(params, x) -> logits`` and build its :class:`Graph`.

    Returns:
      (graph, flat parameter leaves in the order of ``graph.in_ids[:-1]``).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def flat_apply(leaves, x):
        return apply(jax.tree_util.tree_unflatten(treedef, leaves), x)

    shapes = [jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in leaves]
    closed = jax.make_jaxpr(flat_apply)(shapes, jax.ShapeDtypeStruct(x.shape, x.dtype))
    eqns, in_ids, consts, outs, shapes = flatten(closed, len(leaves) + 1)
    if len(outs) != 1 or isinstance(outs[0], Lit):
        raise UnsupportedOperationError("model: expected a single array output (B, K) of logits")
    graph = build(eqns, in_ids, in_ids[-1], outs[0], consts, shapes)
    return graph, leaves
