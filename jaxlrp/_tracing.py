"""One view of a user's Flax model: NNX modules and Linen modules with variables.

Everything above this module (CAM, LRP, metrics) sees a model only through
:class:`Adapter`:

* ``adapter.params``: the model's array state, a pytree (differentiable leaves);
* ``adapter.apply(params, x, hook=None)``: a pure function ``(B,H,W,C) -> (B,K)``;
* a *hook* ``hook(path, module, output) -> output`` is called on the output of
  every submodule call while tracing, inside ``jax.named_scope`` of the module
  path, so that every jaxpr equation carries its module path in
  ``source_info.name_stack`` for NNX as it does for Linen.

The user's model and classes are never modified: NNX submodule calls are intercepted
on the per-call copy that ``nnx.merge`` makes (see ``_nnx_scopes``).

What "logits" means (:meth:`Adapter.apply`, shared by CAM, LRP and the metrics):

* a structured output (dict, tuple, NamedTuple, dataclass, Hugging Face output) is
  reduced to one array by the ``output=`` selector of :func:`model`; by default its
  ``logits`` key or attribute;
* a model that ends in ``softmax`` or ``log_softmax`` (found in its jaxpr, whatever code
  computes it) has its pre-softmax input explained instead: the trace stops at the
  last submodule output feeding the softmax and the few operations between that output
  and the softmax input are replayed. :func:`model` ``(..., softmax="keep")`` explains
  the probabilities instead;
* a Linen module whose ``__call__`` takes ``train``, ``training``, ``is_training``,
  ``deterministic`` or ``use_running_average`` runs in evaluation mode
  (``train=False``, ``deterministic=True``, ...) unless the user passes that argument.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import re
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors
from flax import linen as nn
from flax import nnx
from jax.extend import core as jcore

from jaxlrp import _cache
from jaxlrp._cache import key_part
from jaxlrp.errors import ExplanationError

Hook = Callable[[str, Any, Any], Any]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class LinenModel:
    """A Linen module bound to its variables, usable wherever an NNX model is.

    Args:
      module: the ``flax.linen.Module``.
      variables: its variables dict, e.g. ``{"params": ..., "batch_stats": ...}``.
      apply_kwargs: keyword arguments for ``module.apply`` (e.g. ``train=False``).
    """

    module: nn.Module
    variables: Any
    apply_kwargs: tuple = ()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.module.apply(self.variables, x, **dict(self.apply_kwargs))

    def tree_flatten(self):
        return (self.variables,), (self.module, self.apply_kwargs)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], children[0], aux[1])


def linen(module: nn.Module, variables: Any, **apply_kwargs: Any) -> LinenModel:
    """Bind a Linen module to its variables: ``jaxlrp.linen(module, variables, train=False)``.

    ``apply_kwargs`` go to ``module.apply``. Evaluation-mode flags that ``__call__``
    accepts (``train``, ``training``, ``is_training``, ``deterministic``,
    ``use_running_average``) default to evaluation mode when not given.
    """
    return LinenModel(module, variables, tuple(sorted(apply_kwargs.items())))


# ----------------------------------------------------------------------------- output options

SOFTMAX_MODES = ("strip", "keep")

# evaluation-mode values of the usual Linen __call__ flags
EVAL_FLAGS = {
    "train": False,
    "training": False,
    "is_training": False,
    "deterministic": True,
    "use_running_average": True,
}


@dataclasses.dataclass(frozen=True)
class LinenOutput:
    """A Linen module with output options (what :func:`model` puts in a LinenModel)."""

    module: nn.Module
    output: Any = None
    softmax: str = "strip"


class NNXOutput(nnx.Module):
    """An NNX model with output options (made by :func:`model`).

    Calling it returns the explained logits; explainers see the wrapped model's own
    submodule paths (no ``model/`` prefix).
    """

    def __init__(self, model: nnx.Module, output: Any = None, softmax: str = "strip"):
        self.model = model
        self.output = output
        self.softmax = softmax

    def __call__(self, x: jax.Array) -> jax.Array:
        return NNXAdapter(self).forward(x)


def _check_output_options(output: Any, softmax: Any) -> None:
    if softmax not in SOFTMAX_MODES:
        raise ExplanationError(f"softmax: expected 'strip' or 'keep', got {softmax!r}")
    ok = output is None or callable(output) or (
        isinstance(output, (str, int, np.integer)) and not isinstance(output, bool))
    if not ok:
        raise ExplanationError(
            "output: expected None, a key or attribute name (str), an index (int) or a "
            f"callable that picks the logits from the model's output, got {output!r}"
        )


def model(model: Any, *, output: Any = None, softmax: str = "strip") -> Any:
    """A model with explicit output options, accepted by every explainer and metric.

    Args:
      model: an NNX module, ``(linen_module, variables)``, :func:`linen` ``(...)`` or a
        bound Linen module (``module.bind(variables)``).
      output: how to get the logits from a structured output: a key or attribute name
        (``"logits"``), an index into a tuple (``0``) or a callable ``out -> (B, K)``.
        None (default): the output itself when it is an array, else its ``logits`` key
        or attribute.
      softmax: ``"strip"`` (default): a model ending in ``softmax``/``log_softmax`` is
        explained on the softmax input (the logits); ``"keep"``: on its output
        (probabilities or log-probabilities).
    Returns:
      An NNX module (:class:`NNXOutput`) or a :class:`LinenModel`; both are pytrees, so
      they pass through ``jax.jit`` like the model itself.
    """
    _check_output_options(output, softmax)
    if isinstance(model, NNXOutput):
        model = model.model
    if isinstance(model, nnx.Module):
        return NNXOutput(model, output, softmax)
    if isinstance(model, nn.Module) and model.scope is not None:
        model = LinenModel(*model.unbind())
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        model = LinenModel(model[0], model[1])
    if isinstance(model, LinenModel):
        module = model.module.module if isinstance(model.module, LinenOutput) else model.module
        return LinenModel(LinenOutput(module, output, softmax), model.variables,
                          model.apply_kwargs)
    as_adapter(model)  # raises the usual error for anything else
    raise ExplanationError(f"model: cannot set output options on {type(model).__name__}")


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, (dict, tuple))


def _desc(v: Any) -> str:
    return str(tuple(v.shape)) if _is_array(v) else type(v).__name__


def describe_output(out: Any) -> str:
    """What a structured model output contains, for error messages."""
    if isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        items = ", ".join(f"{k!r} {_desc(out[k])}" for k in out.keys())
        return f"a {type(out).__name__} with keys: {items}"
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        items = ", ".join(f"{f} {_desc(getattr(out, f))}" for f in out._fields)
        return f"a NamedTuple {type(out).__name__} with fields: {items}"
    if isinstance(out, (tuple, list)):
        items = ", ".join(f"[{i}] {_desc(v)}" for i, v in enumerate(out))
        return f"a {type(out).__name__} of {len(out)}: {items}"
    if dataclasses.is_dataclass(out):
        items = ", ".join(f"{f.name} {_desc(getattr(out, f.name))}"
                          for f in dataclasses.fields(out))
        return f"a dataclass {type(out).__name__} with fields: {items}"
    return f"a {type(out).__name__}"


_MISSING = object()


def _field(out: Any, name: str) -> Any:
    if hasattr(out, "keys") and hasattr(out, "__getitem__") and not isinstance(out, tuple):
        return out[name] if name in out.keys() else _MISSING
    if isinstance(out, (list, jax.Array, np.ndarray)):
        return _MISSING
    return getattr(out, name, _MISSING)


_HOW = ("choose the logits with jaxlrp.model(model, output=...): a key or attribute "
        "name, an index or a callable")


def select_output(out: Any, output: Any = None) -> jax.Array:
    """The logits array in the model's output ``out`` (see :func:`model`, ``output=``)."""
    if output is None:
        if _is_array(out):
            return out
        val = _field(out, "logits")
        if val is _MISSING:
            raise ExplanationError(
                f"output: the model returns {describe_output(out)}, and no 'logits' field; "
                + _HOW
            )
    elif callable(output):
        val = output(out)
    elif isinstance(output, str):
        val = _field(out, output)
        if val is _MISSING:
            raise ExplanationError(
                f"output: no key or attribute {output!r} in the model's output, which is "
                f"{describe_output(out)}"
            )
    else:
        if not isinstance(out, (tuple, list)):
            raise ExplanationError(
                f"output: index {output} needs a tuple or list output, the model returns "
                f"{describe_output(out)}"
            )
        if not -len(out) <= int(output) < len(out):
            raise ExplanationError(
                f"output: index {output} out of range for {describe_output(out)}"
            )
        val = out[int(output)]
    if not _is_array(val):
        raise ExplanationError(
            f"output: the selected output is {describe_output(val)}, expected an array of "
            "logits (B, K)"
        )
    return val


# ----------------------------------------------------------------------------- softmax


class _Stop(Exception):  # noqa: N818 - control flow, never escapes Adapter.apply
    """Ends a forward pass early with the logits (raised from a hook)."""

    def __init__(self, value: Any):
        super().__init__("jaxlrp: forward pass stopped at the logits")
        self.value = value


@dataclasses.dataclass
class _Plan:
    """How :meth:`Adapter.apply` gets logits: ``capture`` (path, call index) of the
    submodule output ``h`` from which ``eqns`` (replayed) compute the softmax input."""

    capture: tuple[str, int] | None = None
    kind: str = ""
    eqns: tuple = ()
    h_var: Any = None
    u_var: Any = None
    consts: dict = dataclasses.field(default_factory=dict)

    def logits(self, h: jax.Array) -> jax.Array:
        if not self.eqns:
            return h
        return _eval_eqns(self.eqns, {self.h_var: h}, self.consts)[self.u_var]


def _eval_eqns(eqns: Any, env: dict, consts: dict) -> dict:
    env = dict(env)

    def read(v):
        if isinstance(v, jcore.Literal):
            return v.val
        return env[v] if v in env else consts[v]

    for e in eqns:
        outs = e.primitive.bind(*map(read, e.invars), **e.primitive.get_bind_params(e.params))
        if not e.primitive.multiple_results:
            outs = [outs]
        env.update(zip(e.outvars, outs, strict=True))
    return env


def _slice(eqns: list, producer: dict, start: Any, end: Any, allowed: set) -> list | None:
    """Equations computing ``end`` from ``start`` alone (and ``allowed`` constants), in
    order, or None when ``end`` also depends on anything else."""
    need, stack, seen = set(), [end], set()
    while stack:
        v = stack.pop()
        if isinstance(v, jcore.Literal) or v is start or v in seen:
            continue
        seen.add(v)
        if v in allowed:
            continue
        i = producer.get(v)
        if i is None:
            return None
        need.add(i)
        stack.extend(eqns[i].invars)
    return [eqns[i] for i in sorted(need)]


def _is_softmax(fn_eqns: list, u: Any, out: Any, consts: dict) -> str:
    """'softmax' / 'log_softmax' when the equations map ``u`` to that of ``u`` on the
    last axis (checked on random values), else ''."""
    shape, dtype = tuple(u.aval.shape), u.aval.dtype
    tol = 1e-5 if jnp.finfo(dtype).bits >= 32 else 2e-2
    rng = np.random.default_rng(0)
    found = {"softmax", "log_softmax"}
    with jax.ensure_compile_time_eval():
        for _ in range(2):
            z = jnp.asarray(rng.standard_normal(shape) * 3.0, dtype)
            try:
                y = np.asarray(_eval_eqns(fn_eqns, {u: z}, consts)[out], np.float64)
            except Exception:  # noqa: BLE001 - anything that fails is not a softmax
                return ""
            zf = np.asarray(z, np.float64)
            ls = zf - zf.max(-1, keepdims=True)
            ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
            if not np.allclose(y, np.exp(ls), rtol=tol, atol=tol):
                found.discard("softmax")
            if not np.allclose(y, ls, rtol=tol, atol=10 * tol):
                found.discard("log_softmax")
    return found.pop() if found else ""


def _find_softmax(closed: Any, hooks: list[tuple[str, int]]) -> _Plan:
    """Find a trailing softmax/log_softmax in ``closed`` (outputs: the selected output,
    then every recorded submodule output, in call order)."""
    jaxpr = closed.jaxpr
    consts = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    out = jaxpr.outvars[0]
    if isinstance(out, jcore.Literal) or len(out.aval.shape) < 1:
        return _Plan()
    if not jnp.issubdtype(out.aval.dtype, jnp.floating):
        return _Plan()
    eqns = list(jaxpr.eqns)
    producer = {v: i for i, e in enumerate(eqns) for v in e.outvars}
    allowed = set(jaxpr.constvars)
    # candidates: vars of the output's shape in its backward cone, earliest first
    cone, stack = set(), [out]
    while stack:
        v = stack.pop()
        if isinstance(v, jcore.Literal) or v in cone:
            continue
        cone.add(v)
        i = producer.get(v)
        if i is not None:
            stack.extend(eqns[i].invars)
    order = {v: producer.get(v, -1) for v in cone}
    cands = sorted((v for v in cone if v is not out
                    and tuple(v.aval.shape) == tuple(out.aval.shape)
                    and jnp.issubdtype(v.aval.dtype, jnp.floating)),
                   key=lambda v: order[v])[-64:]
    for u in cands:
        fn = _slice(eqns, producer, u, out, allowed)
        if fn is None or not fn:
            continue
        kind = _is_softmax(fn, u, out, consts)
        if not kind:
            continue
        hook_vars = jaxpr.outvars[1:]
        for (path, n), hv in reversed(list(zip(hooks, hook_vars, strict=True))):
            if isinstance(hv, jcore.Literal):
                continue
            if hv is u:
                return _Plan((path, n), kind, (), hv, u, consts)
            pre = _slice(eqns, producer, hv, u, allowed)
            if pre is not None and hv in _inputs(pre):
                return _Plan((path, n), kind, tuple(pre), hv, u, consts)
        raise ExplanationError(
            f"model: the model ends in {kind}, but its input is not computed from one "
            "submodule output; return the logits from the model, or explain the "
            "probabilities with jaxlrp.model(model, softmax='keep')"
        )
    return _Plan()


def _inputs(eqns: list) -> set:
    return {v for e in eqns for v in e.invars if not isinstance(v, jcore.Literal)}


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A submodule call seen while tracing: its path, output shape and whether it has params."""

    path: str
    shape: tuple[int, ...]
    has_params: bool
    type_name: str


class Adapter:
    """A uniform, functional view of an NNX or Linen model (see module docstring).

    Subclasses implement ``_raw_apply`` (the model's own output); :meth:`apply` turns
    it into logits: ``output`` selects them from a structured output and, with
    ``softmax == "strip"``, a trailing softmax/log_softmax is removed.
    """

    kind: str
    params: Any
    output: Any = None
    softmax: str = "strip"

    def _raw_apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> Any:
        raise NotImplementedError

    def apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> jax.Array:
        """Logits (B, K) of images (B, H, W, C); ``hook`` sees every submodule output."""
        plan = self._plan(params, x)
        if plan.capture is None:
            return select_output(self._raw_apply(params, x, hook), self.output)
        counts: dict[str, int] = {}

        def capture(path, module, out):
            if hook is not None:
                out = hook(path, module, out)
            n = counts.get(path, 0)
            counts[path] = n + 1
            if (path, n) == plan.capture:
                raise _Stop(plan.logits(out))
            return out

        try:
            self._raw_apply(params, x, capture)
        except _Stop as stop:
            return stop.value
        raise ExplanationError(  # the plan saw this call: the model is not deterministic
            f"model: submodule {plan.capture[0]!r} feeding the {plan.kind} was not called "
            "again; explain the output with jaxlrp.model(model, softmax='keep')"
        )

    def _plan(self, params: Any, x: jax.Array) -> _Plan:
        if self.softmax == "keep":
            return _Plan()
        return cached_shapes("output-plan", self, x, lambda: self._make_plan(params, x))

    def _make_plan(self, params: Any, x: jax.Array) -> _Plan:
        hooks: list[tuple[str, int]] = []
        outs: list[Any] = []

        def record(path, module, out):
            hooks.append((path, sum(1 for p, _ in hooks if p == path)))
            outs.append(out if _is_array(out) else None)
            return out

        def f(p, xx):
            hooks.clear()
            outs.clear()
            sel = select_output(self._raw_apply(p, xx, record), self.output)
            return [sel] + [o for o in outs if o is not None]

        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params)
        closed = jax.make_jaxpr(f)(abstract, jax.ShapeDtypeStruct(x.shape, x.dtype))
        arrays = [h for h, o in zip(hooks, outs, strict=True) if o is not None]
        return _find_softmax(closed, arrays)

    def forward(self, x: jax.Array) -> jax.Array:
        """Logits (B, K) for images (B, H, W, C) with the adapter's own params."""
        return self.apply(self.params, x)

    def layers(self, x: jax.Array) -> list[LayerInfo]:
        """Every submodule call in call-completion order, with its output shape."""
        seen: list[LayerInfo] = []

        def record(path, module, out):
            if path and _is_array(out):
                seen.append(
                    LayerInfo(path, tuple(out.shape), self._has_params(path, module),
                              type(module).__name__)
                )
            return out

        shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
        jax.eval_shape(lambda p, xx: self.apply(p, xx, hook=record), self.params, shape)
        return seen

    def _has_params(self, path: str, module: Any) -> bool:
        raise NotImplementedError


class NNXAdapter(Adapter):
    """Adapter for a ``flax.nnx.Module``; runs it in evaluation mode on a copy.

    An :class:`NNXOutput` wrapper contributes its output options; paths are those of
    the wrapped model.
    """

    kind = "nnx"

    def __init__(self, model: nnx.Module):
        if isinstance(model, NNXOutput):
            self.output, self.softmax = model.output, model.softmax
        self.graphdef, self.params = nnx.split(model)

    def _merged(self, params: Any) -> nnx.Module:
        m = nnx.merge(self.graphdef, params)
        m.eval()
        return m.model if isinstance(m, NNXOutput) else m

    def _raw_apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> Any:
        m = self._merged(params)
        if hook is None:
            with _nnx_scopes(m, None):
                return m(x)
        with _nnx_scopes(m, hook):
            return m(x)

    def _has_params(self, path: str, module: Any) -> bool:
        return len(jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))) > 0


def eval_flags(module: nn.Module, given: dict) -> dict:
    """The evaluation-mode flags (:data:`EVAL_FLAGS`) that ``module.__call__`` accepts
    and ``given`` does not set."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in EVAL_FLAGS.items()
            if k in params and params[k].kind in kinds and k not in given}


class LinenAdapter(Adapter):
    """Adapter for a :class:`LinenModel` (a Linen module with its variables).

    ``__call__`` flags in :data:`EVAL_FLAGS` that the user did not pass are set to their
    evaluation-mode value; Flax scope errors become :class:`ExplanationError`.
    """

    kind = "linen"

    def __init__(self, model: LinenModel):
        self.module = model.module
        inner = model.module
        if isinstance(inner, LinenOutput):
            self.output, self.softmax, inner = inner.output, inner.softmax, inner.module
        self.inner = inner
        self.params = model.variables
        kwargs = dict(model.apply_kwargs)
        self.apply_kwargs = {**kwargs, **eval_flags(inner, kwargs)}

    def _raw_apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> Any:
        try:
            if hook is None:
                return self.inner.apply(params, x, **self.apply_kwargs)

            def interceptor(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                if context.method_name != "__call__":
                    return out
                path = "/".join(str(p) for p in context.module.path)
                h = _effective_hook(hook)  # see hook_filter
                return out if h is None else h(path, context.module, out)

            with nn.intercept_methods(interceptor):
                return self.inner.apply(params, x, **self.apply_kwargs)
        except flax_errors.FlaxError as e:
            raise _linen_error(e, params, x, self.apply_kwargs) from None

    def _has_params(self, path: str, module: Any) -> bool:
        node = self.params.get("params", {}) if hasattr(self.params, "get") else {}
        for part in path.split("/"):
            if not hasattr(node, "get") or part not in node:
                return False
            node = node[part]
        return len(jax.tree_util.tree_leaves(node)) > 0


def _flax_message(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"\s*\(https?://[^)]*\)", "", msg).strip().rstrip(".")


def _linen_error(e: Exception, variables: Any, x: jax.Array, kwargs: dict) -> ExplanationError:
    """A clear :class:`ExplanationError` for a Flax scope error raised by ``apply``."""
    msg = _flax_message(e)
    col = re.search(r'collection "([^"]+)"', str(e))
    col = col.group(1) if col else "?"
    if isinstance(e, flax_errors.ScopeCollectionNotFound):
        keys = list(variables.keys()) if hasattr(variables, "keys") else []
        return ExplanationError(
            f"model: the Linen variables have no {col!r} collection (they have {keys}): "
            f"{msg}. Pass every collection that module.init returned, e.g. "
            "jaxlrp.linen(module, {'params': ..., 'batch_stats': ...})"
        )
    if isinstance(e, flax_errors.ModifyScopeVariableError):
        flags = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
        return ExplanationError(
            f"model: the Linen model updates its {col!r} collection, i.e. runs in training "
            f"mode (apply arguments: {flags or 'none'}): {msg}. Explain it in evaluation "
            "mode, e.g. jaxlrp.linen(module, variables, train=False)"
        )
    if isinstance(e, flax_errors.ScopeParamShapeError):
        hint = ""
        if len(x.shape) == 4 and x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
            hint = (f"; x looks channels-first (NCHW): pass x.transpose(0, 2, 3, 1) "
                    f"(shape {(x.shape[0], x.shape[2], x.shape[3], x.shape[1])})")
        return ExplanationError(
            f"x: the Linen model's parameters do not fit an input of shape "
            f"{tuple(x.shape)}: {msg}. jaxlrp expects channels-last images (B, H, W, C)"
            + hint
        )
    return ExplanationError(f"model: the Linen model cannot be applied: {msg}")


def as_adapter(model: Any, name: str = "model") -> Adapter:
    """Wrap ``model``: an NNX module, a :class:`LinenModel`, a ``(module, variables)``
    pair, a bound Linen module or the result of :func:`model`."""
    if isinstance(model, Adapter):
        return model
    if isinstance(model, nnx.Module):
        return NNXAdapter(model)
    if isinstance(model, LinenModel):
        return LinenAdapter(model)
    if (
        isinstance(model, tuple)
        and len(model) == 2
        and isinstance(model[0], nn.Module)
    ):
        return LinenAdapter(LinenModel(model[0], model[1]))
    if isinstance(model, nn.Module):
        if model.scope is not None:  # bound: module.bind(variables)
            return LinenAdapter(LinenModel(*model.unbind()))
        raise ExplanationError(
            f"{name}: a Linen module needs its variables; pass (module, variables) or "
            "jaxlrp.linen(module, variables)"
        )
    raise ExplanationError(
        f"{name}: expected a flax.nnx.Module, a (linen.Module, variables) pair or "
        f"jaxlrp.linen(...), got {type(model).__name__}"
    )


def shape_key(adapter: Adapter, x: jax.Array) -> Any:
    """A hashable key for everything shape-related about (model, x), or None."""
    if not isinstance(adapter, (NNXAdapter, LinenAdapter)):
        return None
    base = static_key(adapter)
    leaves, treedef = jax.tree_util.tree_flatten(adapter.params)
    shapes = tuple((tuple(a.shape), str(a.dtype)) for a in leaves)
    key = (base, treedef, shapes, tuple(x.shape), str(x.dtype))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def cached_shapes(kind: str, adapter: Adapter, x: jax.Array, compute: Callable[[], Any]) -> Any:
    """``compute()`` (an abstract trace of the model), cached per ``kind`` and
    :func:`shape_key` in ``jaxlrp._cache.SHAPES``: eager explainer calls in a loop (as
    metrics make them) do not re-trace the model to validate it. Errors are raised again
    on every call."""
    key = shape_key(adapter, x)
    if key is None:
        return compute()
    return _cache.SHAPES.get((kind, key), compute)


def apply_checked(adapter: Adapter, x: jax.Array, name: str = "x") -> jax.ShapeDtypeStruct:
    """Abstractly run the model on ``x``; turn shape errors into :class:`ExplanationError`.

    Returns the logits' shape/dtype, which must be (B, K). Cached (:func:`cached_shapes`).
    """
    return cached_shapes("logits", adapter, x, lambda: _apply_checked(adapter, x, name))


def _apply_checked(adapter: Adapter, x: jax.Array, name: str) -> jax.ShapeDtypeStruct:
    try:
        out = jax.eval_shape(adapter.apply, adapter.params, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except ExplanationError as e:
        # raised by the model's own checks inside the trace: drop JAX's traceback note
        raise type(e)(str(e).split("\n-----")[0]) from None
    except (TypeError, ValueError, IndexError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExplanationError(
            f"{name}: the model cannot be applied to an input of shape {tuple(x.shape)} "
            f"and dtype {x.dtype}: {msg}"
        ) from e
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ExplanationError(
            f"model: expected outputs of shape (B, K) = ({x.shape[0]}, K), got {tuple(out.shape)}"
        )
    return out


# ----------------------------------------------------------------------------- NNX scopes
#
# Copy, don't patch: ``NNXAdapter.apply`` merges a fresh copy of the model for every
# call. Each module instance of THAT copy gets a subclass of its own class
# (:func:`_scoped_class`) whose ``__call__`` enters ``jax.named_scope(path)`` and applies
# the hook. The user's model, the user's classes and flax's classes are never changed;
# the per-call state (paths, hook, call stack) lives in a ``ContextVar``, so concurrent
# traces in other threads (or other contexts) are independent.


@dataclasses.dataclass
class _CallState:
    """What the scoped ``__call__`` of one traced copy needs: module paths by id, the hook
    and the stack of active module calls (for relative scope names)."""

    paths: dict[int, str]
    hook: Hook | None
    stack: list[tuple[Any, str]] = dataclasses.field(default_factory=list)


_STATE: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar(
    "jaxlrp_nnx_call_state", default=None
)
_HOOK_FILTER: contextvars.ContextVar[Callable[[Hook | None], Hook | None] | None] = (
    contextvars.ContextVar("jaxlrp_hook_filter", default=None)
)
_SCOPED: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()
_SCOPED_LOCK = threading.Lock()


def _effective_hook(hook: Hook | None) -> Hook | None:
    """``hook``, or what the active hook filter makes of it (see :func:`hook_filter`)."""
    f = _HOOK_FILTER.get()
    return hook if f is None else f(hook)


@contextlib.contextmanager
def hook_filter(f: Callable[[Hook | None], Hook | None]) -> Iterator[None]:
    """Within the block, submodule hooks are ``f(hook)`` instead of ``hook``.

    For code that re-traces a model call inside a trace of its own (``soften``): it
    defers the real hook to its own evaluation, so the hook never sees inner tracers.
    """
    token = _HOOK_FILTER.set(f)
    try:
        yield
    finally:
        _HOOK_FILTER.reset(token)


def _scoped_call(self, *args, **kwargs):
    base_call = _scoped_base(type(self)).__call__
    state = _STATE.get()
    path = None if state is None else state.paths.get(id(self))
    if path is None:
        return base_call(self, *args, **kwargs)
    stack = state.stack
    parent = stack[-1][1] if stack else ""
    scope = path[len(parent) + 1:] if parent and path.startswith(parent + "/") else path
    stack.append((self, path))
    try:
        if path:
            with jax.named_scope(scope):
                out = base_call(self, *args, **kwargs)
        else:
            out = base_call(self, *args, **kwargs)
    finally:
        stack.pop()
    hook = _effective_hook(state.hook)
    if hook is not None and path:
        out = hook(path, self, out)
    return out


def _scoped_base(cls: type) -> type:
    return cls.__dict__.get("_jaxlrp_scoped_base", cls)


def _scoped_class(cls: type) -> type:
    """The subclass of ``cls`` (same name) whose ``__call__`` scopes and hooks, made once
    per class. (Flax registers every Module subclass with jax's pytree registry, which
    keeps it alive; the table here holds classes weakly.)"""
    with _SCOPED_LOCK:
        sub = _SCOPED.get(cls)
        if sub is None:
            attrs = {
                "__call__": _scoped_call,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                "_jaxlrp_scoped_base": cls,
            }
            sub = _SCOPED[cls] = _subclass(cls, attrs)
        return sub


def _subclass(cls: type, attrs: dict[str, Any]) -> type:
    """``class cls.__name__(cls)`` with ``attrs``, made with ``cls``'s metaclass; a flax
    Pytree subclass keeps its base's ``pytree=`` setting."""
    kwds = {}
    if isinstance(getattr(cls, "_pytree__is_pytree", None), bool):
        kwds["pytree"] = cls._pytree__is_pytree
    return types.new_class(cls.__name__, (cls,), kwds, lambda ns: ns.update(attrs))


@contextlib.contextmanager
def rescope(root: nnx.Module) -> Iterator[None]:
    """Scope ``root``'s submodule calls like those of the copy being traced, if any.

    For code that re-merges a traced copy inside its own sub-trace (``soften``): the new
    copy's modules get the same paths and the active hook.
    """
    state = _STATE.get()
    if state is None:
        yield
        return
    with _nnx_scopes(root, state.hook):
        yield


@contextlib.contextmanager
def _nnx_scopes(root: nnx.Module, hook: Hook | None) -> Iterator[None]:
    """Scope (and hook) every submodule call of ``root``, a fresh copy owned by the caller.

    Each module instance of ``root`` gets its scoped subclass (:func:`_scoped_class`);
    the paths and the hook are set in a ``ContextVar`` for the block.
    """
    paths: dict[int, str] = {}
    for path, node in nnx.iter_graph(root):
        if isinstance(node, nnx.Module) and not any(str(p).startswith("_") for p in path):
            if id(node) in paths:
                continue
            paths[id(node)] = "/".join(str(p) for p in path)
            cls = type(node)
            if "_jaxlrp_scoped_base" not in cls.__dict__:
                object.__setattr__(node, "__class__", _scoped_class(cls))
    token = _STATE.set(_CallState(paths, hook))
    try:
        yield
    finally:
        _STATE.reset(token)


MAX_EXTRA_TOKENS = 5


def token_grid(shape: tuple[int, ...], tokens: Any = None,
               name: str = "layer") -> tuple[int, int, int] | None:
    """The (h, w, skip) grid of a token layer output (B, N, D), or None if there is none.

    Rule (``tokens=None``): ``N = h * w + extra`` with ``h == w >= 2`` and ``extra`` the
    fewest of 0 (no extra tokens), 1 (a class token), 2 (class + distillation token),
    ..., :data:`MAX_EXTRA_TOKENS` (class + 4 register tokens). Extra tokens are taken to
    be leading, as in ViT, DeiT and DINOv2: the grid is tokens ``skip = extra`` to
    ``N - 1``, row-major. ``tokens=(h, w)`` or ``(h, w, skip)`` overrides the rule: the
    grid is tokens ``skip .. skip + h*w - 1`` (``skip`` defaults to ``N - h*w``); every
    other token is dropped.
    """
    if len(shape) != 3:
        return None
    n = shape[1]
    if tokens is not None:
        h, w, skip = check_tokens(tokens)
        skip = n - h * w if skip is None else skip
        if skip < 0 or skip + h * w > n:
            raise ExplanationError(
                f"tokens: a {h}x{w} grid after {skip} skipped tokens does not fit the "
                f"{n} tokens of {name!r} (output shape {tuple(shape)})"
            )
        return h, w, skip
    for extra in range(MAX_EXTRA_TOKENS + 1):
        side = int(round((n - extra) ** 0.5)) if n - extra > 0 else 0
        if side >= 2 and side * side == n - extra:
            return side, side, extra
    return None


def check_tokens(tokens: Any) -> tuple[int, int, int | None]:
    """Validate ``tokens=(h, w)`` or ``(h, w, skip)``; returns (h, w, skip or None)."""
    ok = isinstance(tokens, (tuple, list)) and len(tokens) in (2, 3) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tokens)
    if not ok or min(tokens[:2]) < 1 or (len(tokens) == 3 and tokens[2] < 0):
        raise ExplanationError(
            "tokens: expected None, (h, w) or (h, w, skip) with positive ints h, w and "
            f"skip >= 0 (skipped leading tokens), got {tokens!r}"
        )
    return int(tokens[0]), int(tokens[1]), (int(tokens[2]) if len(tokens) == 3 else None)


def default_cam_layer(adapter: Adapter, x: jax.Array) -> str:
    """The default CAM layer of a model.

    * Convolutional model (its last spatial layer comes after its last token layer):
      the last submodule with parameters whose output is a spatial map (B, H, W, C),
      H*W > 1.
    * Token model (a ViT; its last token layer comes last): the *blocks* are the
      outermost submodules with parameters whose output is a token map (B, N, D) with a
      grid (:func:`token_grid`), normalisation layers excluded. The default is the last
      block whose grid tokens influence the logits: with class-token pooling the last
      block's patch tokens get exactly zero gradient, so it is the block before it (the
      last block's input, as pytorch-grad-cam's ViT tutorial); with mean pooling, the
      last block. Influence is probed once per model structure and input shape with one
      gradient on a random input (the model's parameters when concrete; else the last
      block).
    """
    infos = adapter.layers(x)
    spatial = [i for i, info in enumerate(infos)
               if len(info.shape) == 4 and info.shape[1] * info.shape[2] > 1
               and info.has_params]
    tokens = [i for i, info in enumerate(infos)
              if info.has_params and token_grid(info.shape) is not None]
    if tokens and (not spatial or tokens[-1] > spatial[-1]):
        return _default_token_layer(adapter, x, [infos[i] for i in tokens])
    if not spatial:
        raise ExplanationError(
            "layer: the model has no submodule with a spatial (B, H, W, C) or token "
            "(B, N, D) output; name a layer explicitly (see jaxlrp.layers(model, x))"
        )
    return infos[spatial[-1]].path


def _default_token_layer(adapter: Adapter, x: jax.Array, infos: list[LayerInfo]) -> str:
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.path] = counts.get(info.path, 0) + 1
    paths = [i.path for i in infos]
    blocks = [i for i in infos
              if counts[i.path] == 1
              and not any(i.path.startswith(p + "/") for p in paths)
              and "norm" not in i.type_name.lower()]
    if not blocks:
        blocks = [i for i in infos if counts[i.path] == 1] or infos
    influence = _token_influence(adapter, x, blocks)
    for info, ok in zip(reversed(blocks), reversed(influence), strict=True):
        if ok:
            return info.path
    return blocks[-1].path


def _token_influence(adapter: Adapter, x: jax.Array, blocks: list[LayerInfo]) -> list[bool]:
    """Whether the grid tokens of each block get a nonzero gradient of the summed logits
    (one backward pass on a random input); all True when parameters are traced."""
    params = adapter.params
    if not all_concrete(params):
        return [True] * len(blocks)
    with jax.ensure_compile_time_eval():
        rng = np.random.default_rng(0)
        xr = jnp.asarray(rng.uniform(0, 1, x.shape), x.dtype)
        deltas = {b.path: jnp.zeros(b.shape, x.dtype) for b in blocks}

        def total(ds):
            def hook(path, module, out):
                return out + ds[path].astype(out.dtype) if path in ds else out

            return jnp.sum(adapter.apply(params, xr, hook=hook).astype(jnp.float32))

        grads = jax.jit(jax.grad(total))(deltas)  # one compile, not op-by-op dispatch
        out = []
        for b in blocks:
            h, w, skip = token_grid(b.shape)
            g = np.asarray(grads[b.path][:, skip:skip + h * w])
            out.append(bool(np.any(g != 0)))
    return out


def layers(model: Any, x: jax.Array | tuple[int, ...]) -> list[LayerInfo]:
    """List the submodule calls of ``model`` on input ``x`` (an array or a shape).

    Returns:
      One :class:`LayerInfo` per call, with ``path`` (use it as ``layer=``), output
      ``shape`` and whether the submodule has parameters.
    """
    adapter = as_adapter(model)
    if isinstance(x, tuple):
        x = jax.ShapeDtypeStruct(x, jnp.float32)
    return adapter.layers(x)


# ----------------------------------------------------------------------------- eager calls


def static_key(adapter: Adapter) -> Any:
    """A hashable key for the model's structure (not its parameter values); objects that
    do not hash by value are held weakly (:func:`jaxlrp._cache.key_part`)."""
    if isinstance(adapter, NNXAdapter):
        return ("nnx", adapter.graphdef)
    if isinstance(adapter, LinenAdapter):
        treedef = jax.tree_util.tree_structure(adapter.params)
        kwargs = tuple(sorted(adapter.apply_kwargs.items()))  # a dict would key by id
        return ("linen", key_part(adapter.module), treedef, key_part(kwargs))
    return ("other", key_part(adapter))


def all_concrete(*trees: Any) -> bool:
    """True when no leaf of ``trees`` is a tracer (we are not inside jit/vmap/grad)."""
    return not any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees)
    )
