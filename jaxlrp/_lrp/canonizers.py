"""Canonizers: rewrites of the LRP graph that keep the model's function.

A canonizer is a function ``Graph -> Graph``. They run after tracing and
before rules are assigned, like Zennit's canonizers, but they never touch the
user's model: they rewrite :class:`~jaxlrp._lrp.graph.Graph` nodes.

* :func:`merge_batchnorm` folds the elementwise affine equations that directly
  follow a conv/dense/pooling layer (its bias, a BatchNorm in inference mode,
  a constant scale) into that layer, so rules see ``z = x @ W' + b'`` with
  ``W' = W * scale`` and ``b' = (b - mean) * scale + beta``. The model output
  is unchanged: the folded layer computes exactly the same equations.

Residual adds need no canonizer: the graph already marks an ``add`` of two
activations as a ``sum`` node, which the composites route through the
proportional :class:`~jaxlrp.rules.Norm` rule (Zennit needs a ResNet
canonizer for that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jaxlrp._lrp.graph import AFFINE, Graph, Node, feature_axis, sort_nodes

Canonizer = Callable[[Graph], Graph]


def _foldable(e, v: int, node: Node, graph: Graph) -> bool:
    """Whether equation ``e`` (consuming ``v``) is affine and can fold into ``node``."""
    if e.name not in AFFINE:
        return False
    act_ins = [a for a in e.ins if isinstance(a, int) and a in graph.act]
    if act_ins != [v]:
        return False
    if e.name == "div" and e.ins[0] != v:
        return False
    if e.name in ("mul", "div") and node.kind in ("conv", "dense"):
        axis = feature_axis(node, graph)
        if axis is None:
            return False
        other = e.ins[1] if e.ins[0] == v else e.ins[0]
        shape = graph.shapes[other] if isinstance(other, int) else ()
        out_rank = len(graph.shapes[v])
        if len(shape) not in (0, out_rank):
            return False
        if shape and any(s != 1 for d, s in enumerate(shape) if d != axis):
            return False
    return True


def merge_batchnorm(graph: Graph) -> Graph:
    """Fold bias adds and BatchNorm-style affine chains into the preceding layer."""
    users = graph.consumers()
    owner = {id(e): n for n in graph.nodes if n.kind == "activation" for e in n.eqns}
    for node in [n for n in graph.nodes if n.kind in ("conv", "dense", "pool")]:
        v = node.outs[0]
        while v != graph.out_id:
            us = users.get(v, [])
            if len(us) != 1 or id(us[0]) not in owner or not _foldable(us[0], v, node, graph):
                break
            e = us[0]
            group = owner.pop(id(e))
            group.eqns.remove(e)
            node.post.append(e)
            node.eqns.append(e)
            v = e.outs[0]
            node.outs = [v]
            group.ins = [v]
        # groups emptied by folding disappear below
    graph.nodes = [n for n in graph.nodes if n.kind != "activation" or n.eqns]
    for n in graph.nodes:
        if n.kind == "activation":
            ids = {o for e in n.eqns for o in e.outs}
            n.outs = [o for o in n.outs if o in ids]
            n.path = n.eqns[0].path
    sort_nodes(graph)
    return graph


def default() -> tuple[Canonizer, ...]:
    """The canonizers :func:`jaxlrp._lrp.lrp` applies unless told otherwise."""
    return (merge_batchnorm,)


def apply_all(graph: Graph, canonizers: Sequence[Canonizer]) -> Graph:
    """Apply ``canonizers`` in order."""
    for c in canonizers:
        graph = c(graph)
    return graph
