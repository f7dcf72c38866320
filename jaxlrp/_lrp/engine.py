"""The LRP interpreter: one forward pass over the traced graph, one relevance pass back.

``lrp(model, x, target)`` traces the model (NNX or Linen) to a graph of layers
(:mod:`jaxlrp._lrp.graph`), applies canonizers (:mod:`jaxlrp.canonizers`),
asks the composite (:mod:`jaxlrp.composites`) for each layer's rule
(:mod:`jaxlrp.rules`), runs the forward equations once and then walks the
layers backwards. Everything is ordinary JAX, so the result composes with
``jax.jit``, ``jax.vmap`` and ``jax.grad`` (second order included).

Output scale: the relevance that enters the network at the output is
``init="logit"`` (default): the target logit, so that a conservative
composite's input relevance sums to the logit (Captum's convention); or
``init="one_hot"``: 1 for the target class, so that it sums to 1 for a
conservative composite (Zennit's convention of starting from the one-hot
gradient). The two differ by exactly the factor ``logit``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp import _cache
from jaxlrp._lrp import attention_rules as A
from jaxlrp._lrp import canonizers as C
from jaxlrp._lrp import composites as K
from jaxlrp._lrp import conv_transpose as CT
from jaxlrp._lrp import memory as M
from jaxlrp._lrp import rules as R
from jaxlrp._lrp.graph import Graph, Lit, Node, evaluate, feature_axis, trace
from jaxlrp._tracing import all_concrete, apply_checked, as_adapter, static_key
from jaxlrp._validation import check_images, finite_rows, poison, static_targets, valid_targets
from jaxlrp.errors import ExplanationError


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["relevance"],
    meta_fields=["kind", "path", "rule"],
)
@dataclasses.dataclass(frozen=True)
class LayerRelevance:
    """Relevance entering one layer (at its input), for layer-wise inspection.

    ``relevance`` is an array shaped like the layer input, or a tuple of arrays for a
    layer with several inputs (a residual ``sum``).
    """

    kind: str
    path: str
    rule: str
    relevance: Any


def _value(env: dict, a: Any) -> Any:
    return a.value if isinstance(a, Lit) else env[a]


def _run(eqns, env: dict, overrides: dict) -> dict:
    local = dict(overrides)

    class _Env(dict):
        def __missing__(self, key):
            return env[key]

    scope = _Env(local)
    evaluate(eqns, scope)
    return scope


def _function_layer(node: Node, env: dict, graph: Graph | None = None) -> R.FunctionLayer:
    # a norm runs only its linear equations, with the statistics held at their values
    eqns = node.lin if node.kind == "norm" and node.lin else node.eqns
    held = {h: env[h] for h in node.hold}

    def fn(*xs):
        scope = _run(eqns, env, {**held, **dict(zip(node.ins, xs, strict=True))})
        outs = tuple(scope[o] for o in node.outs)
        return outs[0] if len(outs) == 1 else outs

    affine = graph is not None and node.kind == "activation" and all(
        _affine_eqn(e, graph.act) for e in node.eqns
    )
    return R.FunctionLayer(node.kind, node.path, fn, affine)


def _affine_eqn(e, act: set[int]) -> bool:
    """``e`` adds, subtracts, multiplies or divides one activation by constants."""
    ins = [a for a in e.ins if isinstance(a, int) and a in act]
    if e.name not in ("add", "sub", "mul", "div", "neg") or len(ins) != 1:
        return False
    return not (e.name == "div" and e.ins[0] != ins[0])


def _product_layer(node: Node, env: dict, graph: Graph) -> A.ProductLayer:
    core = node.core
    pos = [i for i, a in enumerate(core.ins) if isinstance(a, int) and a in graph.act]
    inverse = tuple(core.name == "div" and p == 1 for p in pos)

    def fn(*xs):
        ops = [_value(env, a) for a in core.ins]
        for p, v in zip(pos, xs, strict=True):
            ops[p] = v
        return core.prim.bind(*ops, **core.params)

    def bilinear(*fs):
        if core.name == "div":
            return fn(fs[0], 1 / fs[1]) if len(fs) == 2 else fn(*fs)
        return fn(*fs)

    maker = {o: n for n in graph.nodes for o in n.outs}

    def origin(i: int) -> str:
        n = maker.get(i)
        while n is not None and n.kind == "gradient" and len(n.ins) == 1:
            n = maker.get(n.ins[0])
        return "input" if n is None else n.kind

    kinds = tuple(origin(i) for i in node.ins)
    return A.ProductLayer(node.kind, node.path, fn, bilinear, inverse, kinds)


def _linear_layer(node: Node, env: dict, graph: Graph) -> R.LinearLayer:
    core = node.core
    x_pos = next(i for i, a in enumerate(core.ins) if isinstance(a, int) and a in graph.act)
    w_pos = 1 - x_pos
    weight = _value(env, core.ins[w_pos])

    def core_fn(x, w):
        ops = [None, None]
        ops[x_pos], ops[w_pos] = x, w
        return core.prim.bind(*ops, **core.params)

    z_id = core.outs[0]
    z_shape = graph.shapes[z_id]
    dtype = env[core.outs[0]].dtype if core.outs[0] in env else weight.dtype

    def post(z):
        if not node.post:
            return z
        scope = _run(node.post, env, {z_id: z})
        return scope[node.outs[0]]

    zeros = jnp.zeros(z_shape, dtype)
    bias = post(zeros)
    if any(_scales(e, graph) for e in node.post):
        scale = post(jnp.ones(z_shape, dtype)) - bias
        axis = feature_axis(node, graph)
        index = tuple(slice(None) if d == axis else 0 for d in range(len(z_shape)))
        vec = scale[index]
        w_axis = _weight_axis(core, w_pos, graph)
        shape = [1] * jnp.ndim(weight)
        shape[w_axis] = vec.shape[0]
        weight = weight * vec.reshape(shape).astype(weight.dtype)
    return R.LinearLayer(node.kind, node.path, core_fn, weight, bias, _transpose_core(core, x_pos))


def _transpose_core(core, x_pos: int):
    """The explicit transposed convolution (:mod:`conv_transpose`), else None (``jax.vjp``)."""
    if core.name != "conv_general_dilated" or x_pos != 0 or not CT.supported(core.params):
        return None

    def transpose(w, g, like):
        return CT.transpose_lhs(g, w, like.shape, core.params).astype(like.dtype)

    return transpose


def _scales(e, graph: Graph) -> bool:
    """Whether a folded affine equation multiplies its activation by something other than 1."""
    if e.name in ("mul", "div", "neg"):
        return True
    return e.name == "sub" and not (isinstance(e.ins[0], int) and e.ins[0] in graph.act)


def _weight_axis(core, w_pos: int, graph: Graph) -> int:
    if core.name == "conv_general_dilated":
        return core.params["dimension_numbers"].rhs_spec[0]
    (lc, rc), (lb, rb) = core.params["dimension_numbers"]
    contract, batch = (rc, rb) if w_pos == 1 else (lc, lb)
    rank = len(graph.shapes[core.ins[w_pos]]) if isinstance(core.ins[w_pos], int) else 0
    free = [d for d in range(rank) if d not in contract and d not in batch]
    return free[0]


def _context(node: Node, first_conv: int | None, types: dict | None = None) -> K.LayerContext:
    return K.LayerContext(
        kind=node.kind, path=node.path, primitive=node.primitive, index=node.index,
        first=node.first, first_conv=(first_conv is not None and node is first_conv),
        module_type=_type_of(node.path, types or {}),
    )


def _type_of(path: str, types: dict[str, str]) -> str:
    """Class name of the innermost module on ``path``.

    Linen name stacks start with the root module's name, and some functions add scopes
    of their own (``jnp.einsum`` adds its spec), so the longest known prefix wins.
    """
    parts = path.split("/") if path else []
    for start in (0, 1):
        for end in range(len(parts), start, -1):
            key = "/".join(parts[start:end])
            if key in types:
                return types[key]
    return ""


def module_types(adapter: Any, x: jax.Array) -> dict[str, str]:
    """Module path -> class name of the module called there (``""`` for the root)."""
    return {info.path: info.type_name for info in adapter.layers(x)}


def check_paths(composite: Any, graph: Graph) -> None:
    keys = composite.path_keys() if hasattr(composite, "path_keys") else ()
    paths = sorted({n.path for n in graph.nodes if n.path})
    for key in keys:
        k = key.rstrip("/")
        if not any(p == k or p.startswith(k + "/") for p in paths):
            raise ExplanationError(
                f"composite: unknown module path {key!r}; the model's layer paths are {paths}"
            )


def prepare(model: Any, x: jax.Array, canonizers: Sequence[C.Canonizer] | None = None):
    """Trace and canonize ``model`` for inputs shaped like ``x``.

    Returns:
      (adapter, graph, flat parameter leaves).
    """
    adapter = as_adapter(model)
    apply_checked(adapter, x)
    graph, leaves = trace(adapter.apply, adapter.params, x)
    graph = C.apply_all(graph, C.default() if canonizers is None else canonizers)
    graph.types = module_types(adapter, x)
    return adapter, graph, leaves


def lrp(
    model: Any,
    x: jax.Array,
    target: Any = "predicted",
    composite: Any = None,
    *,
    canonizers: Sequence[C.Canonizer] | None = None,
    init: str = "logit",
    return_layers: bool = False,
    batch_chunk: int | None = None,
    checkpoint: bool = False,
) -> Any:
    """Layer-wise relevance propagation.

    Args:
      model: an NNX module, a ``(linen_module, variables)`` pair or ``jaxlrp.linen(...)``.
      x: (B, H, W, C) images, as the model takes them.
      target: an int, a (B,) int array or ``"predicted"``.
      composite: a composite (``LayerContext -> rule``), a preset name, or None for
        :func:`jaxlrp.composites.paper`.
      canonizers: graph rewrites; default :func:`jaxlrp.canonizers.default`.
      init: ``"logit"`` (relevance sums to the target logit) or ``"one_hot"`` (sums to 1).
      return_layers: also return a list of :class:`LayerRelevance`, input side first.
      batch_chunk: explain this many examples at a time (``jax.lax.map`` inside one
        compiled function): same maps, memory bounded by the chunk
        (:mod:`jaxlrp._lrp.memory`).
      checkpoint: run each layer's rule under ``jax.checkpoint`` (recomputed, not
        stored, when the explanation is differentiated).

    Returns:
      (B, H, W, C) input relevance, and the per-layer list when ``return_layers``.
      Examples whose input is not finite or whose target is out of range under a
      trace come back as NaN (eager calls raise ``ExplanationError`` instead).
      Called eagerly, the computation runs through a cached ``jax.jit``.
    """
    x = check_images(x)
    if init not in ("logit", "one_hot"):
        raise ExplanationError(f"init: expected 'logit' or 'one_hot', got {init!r}")
    comp = K.get(composite)
    if checkpoint:
        comp = M.Checkpointed(comp)
    batch_chunk = M.check_chunk(batch_chunk)
    canon = tuple(C.default() if canonizers is None else canonizers)
    adapter = as_adapter(model)
    out = apply_checked(adapter, x)
    t = static_targets(target, x.shape[0], out.shape[-1])
    if not all_concrete(adapter.params, x, t):
        return _lrp_chunked(adapter, comp, canon, init, return_layers, batch_chunk,
                            adapter.params, x, t)
    # eager: one compile per structure; composite/canonizer arrays are arguments
    cstat, carrays = _cache.partition(comp)
    kstat, karrays = _cache.partition(canon)
    key = ("lrp", static_key(adapter), cstat.key, kstat.key, init, return_layers, batch_chunk)
    return _cache.jit_call(_cache.JIT, key, _lrp_cached,
                           (adapter, cstat, kstat, init, return_layers, batch_chunk),
                           (adapter.params, carrays, karrays, x, t))


def _lrp_cached(adapter, cstat, kstat, init, return_layers, batch_chunk, params, carrays,
                karrays, x, t):
    comp, canon = cstat.rebuild(carrays), kstat.rebuild(karrays)
    return _lrp_chunked(adapter, comp, canon, init, return_layers, batch_chunk, params, x, t)


def _lrp_chunked(adapter, comp, canon, init, return_layers, batch_chunk, params, x, t):
    impl = functools.partial(_lrp, adapter, comp, canon, init, return_layers)
    if batch_chunk is not None:
        impl = M.over_chunks(impl, batch_chunk)
    return impl(params, x, t)


def _lrp(adapter, comp, canon, init, return_layers, params, x, t):
    graph, leaves = trace(adapter.apply, params, x)
    graph = C.apply_all(graph, canon)
    graph.types = module_types(adapter, x)
    check_paths(comp, graph)
    env = forward_env(graph, leaves, x)
    logits = env[graph.out_id]
    if t is None:
        t = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    rx, layers = propagate(graph, env, comp, initial_relevance(logits, t, init), return_layers)
    rx = poison(rx, finite_rows(x) & valid_targets(t, logits.shape[-1]))
    if return_layers:
        return rx, layers
    return rx


def forward_env(graph: Graph, leaves: Sequence[Any], x: jax.Array) -> dict[int, Any]:
    """Run the model's equations once; returns every value by id."""
    env: dict[int, Any] = dict(graph.consts)
    for i, v in zip(graph.in_ids[:-1], leaves, strict=True):
        env[i] = v
    env[graph.x_id] = x
    return evaluate(graph.eqns, env)


def initial_relevance(logits: jax.Array, t: jax.Array, init: str) -> jax.Array:
    """(B, K) relevance at the output: the target logit (``"logit"``) or 1 (``"one_hot"``)."""
    onehot = jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype)
    return onehot * logits if init == "logit" else onehot


def propagate(
    graph: Graph, env: dict, comp: Any, r_out: jax.Array, return_layers: bool = False
) -> tuple[jax.Array, list[LayerRelevance]]:
    """Walk the layers backwards from ``r_out`` at the output to the input relevance."""
    logits = env[graph.out_id]
    relevance: dict[int, Any] = {graph.out_id: r_out}
    convs = [n for n in graph.nodes if n.kind == "conv"]
    first_conv = convs[0] if convs else None
    layers: list[LayerRelevance] = []
    for node in reversed(graph.nodes):
        outs = [relevance.pop(o, None) for o in node.outs]
        if all(r is None for r in outs):
            continue
        outs = [jnp.zeros(graph.shapes[o], logits.dtype) if r is None else r
                for o, r in zip(node.outs, outs, strict=True)]
        r = outs[0] if len(outs) == 1 else tuple(outs)
        rule = comp(_context(node, first_conv, graph.types))
        if rule is None:
            rule = K.DEFAULTS.get(node.kind, R.Gradient())
        if node.kind in ("conv", "dense"):
            layer = _linear_layer(node, env, graph)
        elif node.kind == "product":
            layer = _product_layer(node, env, graph)
        else:
            layer = _function_layer(node, env, graph)
        inputs = tuple(env[i] for i in node.ins)
        r_in = rule(layer, inputs, r)
        for i, ri in zip(node.ins, r_in, strict=True):
            ri = jnp.asarray(ri)
            relevance[i] = relevance[i] + ri if i in relevance else ri
        if return_layers and node.kind in ("conv", "dense", "pool", "sum"):
            value = r_in[0] if len(r_in) == 1 else tuple(r_in)
            layers.append(LayerRelevance(node.kind, node.path, type(rule).__name__, value))
    x = env[graph.x_id]
    return relevance.get(graph.x_id, jnp.zeros_like(x)), layers[::-1]
