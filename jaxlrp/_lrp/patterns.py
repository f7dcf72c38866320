"""Recognising normalisation, softmax and two-activation products in the flat equations.

A primitive that combines two *different* activations is not a layer by itself.
:func:`find` looks at each such equation (``mul``/``div`` of two activations whose
elementwise groups differ, ``dot_general`` with activations on both operands) and
decides which pattern it closes:

=============  ======================================================  ===============
node kind      recognised as                                           examples
=============  ======================================================  ===============
``norm``       ``v * s`` or ``v / s`` where ``s`` is a *statistic* of  LayerNorm,
               the same data: every activation path into ``s`` runs   GroupNorm,
               through a reduction (``reduce_sum``/``max``/...), and   RMSNorm,
               only elementwise and shape operations sit between      InstanceNorm,
               (no conv/dense). The region runs from the nearest      hand-written
               value ``x`` that dominates both operands; the affine   ``(x-m)/sd``,
               scale and bias after it are folded in.                 L2 normalise
``softmax``    a ``norm`` whose numerator is ``exp`` of ``x`` (minus  ``jax.nn.softmax``,
               a constant such as ``stop_gradient(max(x))``): the     hand-written
               region is extended back to the logits ``x``.           ``exp/sum(exp)``
``product``    everything else: ``dot_general`` of two activations,   Q K^T, A V,
               ``a * b``, ``a / b`` (gates, split attention, SE).     a*sigmoid(b)
=============  ======================================================  ===============

For a ``norm``, the statistic ``s`` is recorded in ``Region.hold``: the relevance pass
evaluates the region with ``s`` fixed at its forward value (the CP-LRP/AttnLRP "LN
rule"), which makes it an affine map of ``x``: the centring ``x - mean(x)`` stays
linear, the scale ``1/std`` is a constant. ``Region.lin`` lists the equations that map
``x`` to the output when ``s`` is fixed.

``stop_gradient`` ends the activation path (:func:`jaxlrp._lrp.graph.build`): its output
is a constant for LRP, as it is for the gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
SHAPE_OPS = {
    "reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim",
    "convert_element_type", "copy", "copy_p", "reduce_precision",
}
AFFINE_CONST = {"add", "sub", "mul", "div", "neg"}
_MAX_CANDIDATES = 24


@dataclasses.dataclass
class Region:
    """Equations that form one ``norm``, ``softmax`` or ``product`` node.

    Attributes:
      kind: ``norm``, ``softmax`` or ``product``.
      eqns: indices into the flat equation list, in order.
      ins: activation ids entering (one root for norm/softmax; the operands for product).
      out: the activation id leaving the region.
      core: index of the combining equation.
      hold: statistic ids held at their forward value (norm).
      lin: indices of the equations mapping the root to ``out`` with ``hold`` fixed.
    """

    kind: str
    eqns: list[int]
    ins: list[int]
    out: int
    core: int
    hold: list[int] = dataclasses.field(default_factory=list)
    lin: list[int] = dataclasses.field(default_factory=list)


def _act_ins(e: Any, act: set[int]) -> list[int]:
    return [a for a in e.ins if isinstance(a, int) and a in act]


class _Index:
    """Producer/consumer tables over the flat equations."""

    def __init__(self, eqns: Sequence[Any], act: set[int]):
        self.eqns = eqns
        self.act = act
        self.producer: dict[int, int] = {}
        self.users: dict[int, list[int]] = {}
        for i, e in enumerate(eqns):
            for o in e.outs:
                self.producer[o] = i
            for a in e.ins:
                if isinstance(a, int):
                    self.users.setdefault(a, []).append(i)

    def pos(self, v: int) -> int:
        return self.producer.get(v, -1)

    def ancestors(self, v: int) -> set[int]:
        """Activation ids upstream of ``v`` (``v`` included)."""
        seen = {v}
        stack = [v]
        while stack:
            w = stack.pop()
            p = self.producer.get(w)
            if p is None:
                continue
            for a in _act_ins(self.eqns[p], self.act):
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
        return seen


def _walk(v: int, root: int, inside: set[int], idx: _Index) -> tuple[bool, bool, bool]:
    """Walk back from ``v`` inside a region without crossing reductions.

    Returns (reaches ``root`` without a reduction, crosses a reduction, meets only
    elementwise/shape operations).
    """
    from jaxlrp._lrp.primitives import ELEMENTWISE

    seen = {v}
    stack = [v]
    direct = reduced = False
    simple = True
    while stack:
        w = stack.pop()
        if w == root:
            direct = True
            continue
        p = idx.producer.get(w)
        if p is None or p not in inside:
            continue
        e = idx.eqns[p]
        if e.name in REDUCTIONS:
            reduced = True
            continue
        if e.name not in ELEMENTWISE and e.name not in SHAPE_OPS:
            simple = False
        for a in _act_ins(e, idx.act):
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return direct, reduced, simple


def is_statistic(s: int, v: int, root: int, region: list[int], idx: _Index) -> bool:
    """Whether ``s`` is a statistic of ``root`` (every path from it runs through a
    reduction, with only elementwise and shape operations: no conv/dense) while ``v``
    depends on ``root`` directly."""
    inside = set(region)
    s_direct, s_reduced, s_simple = _walk(s, root, inside, idx)
    v_direct, _, _ = _walk(v, root, inside, idx)
    return s_reduced and s_simple and not s_direct and v_direct


def _region_from(root: int, core: int, out_anc: set[int], idx: _Index) -> list[int] | None:
    """Equations between ``root`` and equation ``core`` (inclusive), if ``root`` dominates them."""
    desc = {root}
    region = []
    for i in range(idx.pos(root) + 1, core + 1):
        e = idx.eqns[i]
        if any(a in desc for a in _act_ins(e, idx.act)):
            desc.update(e.outs)
            if i == core or any(o in out_anc for o in e.outs):
                region.append(i)
    from jaxlrp._lrp.primitives import ELEMENTWISE

    allowed = ELEMENTWISE | SHAPE_OPS | REDUCTIONS
    if any(idx.eqns[i].name not in allowed for i in region):
        return None  # a norm or softmax holds no conv/dense or other layer
    produced = {root}
    for i in region:
        produced.update(idx.eqns[i].outs)
    for i in region:
        if any(a not in produced for a in _act_ins(idx.eqns[i], idx.act)):
            return None
    return region


def _internal_ok(region: list[int], out: int, idx: _Index) -> bool:
    """No value made inside the region (other than its output) is used outside it."""
    inside = set(region)
    for i in region:
        for o in idx.eqns[i].outs:
            if o == out:
                continue
            if any(u not in inside for u in idx.users.get(o, [])):
                return False
    return True


def _dominated_region(core: int, a: int, b: int, idx: _Index) -> tuple[int, list[int]] | None:
    anc_a, anc_b = idx.ancestors(a), idx.ancestors(b)
    out = idx.eqns[core].outs[0]
    out_anc = anc_a | anc_b | {out}
    common = sorted(anc_a & anc_b, key=idx.pos, reverse=True)
    for root in common[:_MAX_CANDIDATES]:
        region = _region_from(root, core, out_anc, idx)
        if region is not None:
            return root, region
    return None


def _single_const_affine(e: Any, v: int, idx: _Index) -> bool:
    """``e`` is add/sub/mul/div/neg whose only activation input is ``v`` (div: numerator)."""
    if e.name not in AFFINE_CONST:
        return False
    if _act_ins(e, idx.act) != [v]:
        return False
    return not (e.name == "div" and e.ins[0] != v)


def _extend_forward(region: list[int], out: int, idx: _Index, claimed: set[int]) -> int:
    """Fold the affine scale/bias equations that follow a norm into it."""
    while True:
        us = idx.users.get(out, [])
        if len(us) != 1 or us[0] in claimed:
            return out
        e = idx.eqns[us[0]]
        if not _single_const_affine(e, out, idx):
            return out
        region.append(us[0])
        out = e.outs[0]


def _extend_softmax(root: int, region: list[int], idx: _Index) -> int | None:
    """Move a softmax region's root from ``exp(x - c)`` back to the logits ``x``."""
    p = idx.producer.get(root)
    if p is None or idx.eqns[p].name != "exp":
        return None
    inside = set(region)
    region.insert(0, p)
    inside.add(p)
    root = _act_ins(idx.eqns[p], idx.act)[0]
    while True:
        q = idx.producer.get(root)
        if q is None:
            return root
        e = idx.eqns[q]
        ins = _act_ins(e, idx.act)
        shift = (
            e.name in ("add", "sub") and len(ins) == 1 and (e.name == "add" or e.ins[0] == ins[0])
            and _single_const_affine(e, ins[0], idx)
        )
        if not shift or not all(u in inside for u in idx.users.get(root, [])):
            return root
        region.insert(0, q)
        inside.add(q)
        root = ins[0]


def _lin_eqns(region: list[int], root: int, out: int, hold: set[int], idx: _Index) -> list[int]:
    """Region equations that compute ``out`` from ``root`` with ``hold`` fixed."""
    inside = set(region)
    need: set[int] = set()
    stack = [out]
    seen = {out}
    while stack:
        v = stack.pop()
        if v == root or v in hold:
            continue
        p = idx.producer.get(v)
        if p is None or p not in inside:
            continue
        need.add(p)
        for a in _act_ins(idx.eqns[p], idx.act):
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return sorted(need)


def find(eqns: Sequence[Any], act: set[int], combining: Sequence[int]) -> list[Region]:
    """Regions for the combining equations ``combining`` (indices into ``eqns``).

    Combining equations that close no norm or softmax become single-equation
    ``product`` regions.
    """
    idx = _Index(eqns, act)
    claimed: set[int] = set()
    regions: list[Region] = []
    for c in combining:
        if c in claimed:
            continue
        e = eqns[c]
        ops = _act_ins(e, act)
        region = None
        if e.name in ("mul", "div") and len(ops) == 2:
            a, b = ops
            cands = [(a, b)] if e.name == "div" else [(a, b), (b, a)]
            for v, s in cands:
                found = None if s == v else _dominated_region(c, v, s, idx)
                if found is None or not is_statistic(s, v, found[0], found[1], idx):
                    continue
                root, eq = found
                out = e.outs[0]
                if any(i in claimed for i in eq):
                    continue
                kind = "norm"
                new_root = _extend_softmax(root, eq, idx)
                if new_root is not None:
                    kind, root = "softmax", new_root
                else:
                    out = _extend_forward(eq, out, idx, claimed)
                if not _internal_ok(eq, out, idx):
                    continue
                hold = [s] if kind == "norm" else []
                lin = _lin_eqns(eq, root, out, set(hold), idx) if kind == "norm" else list(eq)
                region = Region(kind, sorted(eq), [root], out, c, hold, lin)
                break
        if region is None:
            region = Region("product", [c], list(ops), e.outs[0], c)
        claimed.update(region.eqns)
        regions.append(region)
    return regions
