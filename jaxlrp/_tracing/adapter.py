"""The adapter: one functional view of NNX and Linen models (see :mod:`jaxlrp._tracing`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors
from flax import linen as nn
from flax import nnx

from jaxlrp import _cache
from jaxlrp._cache import key_part
from jaxlrp._tracing.linen import _linen_error, eval_flags
from jaxlrp._tracing.outputs import _find_softmax, _is_array, _Plan, _Stop, select_output
from jaxlrp._tracing.scope import Hook, _effective_hook, _nnx_scopes
from jaxlrp.errors import ExplanationError


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
        return cached_shapes("output-plan", self, x, lambda: self._trace_all(params, x)[0])

    def _trace_all(
        self, params: Any, x: jax.Array
    ) -> tuple[_Plan, jax.ShapeDtypeStruct, list[LayerInfo]]:
        """One trace of the raw model: the output plan (a trailing softmax to strip),
        the logits' shape/dtype under that plan, and the submodule calls :meth:`apply`
        makes under it (up to the captured one when the plan stops early)."""
        calls: list[tuple[str, int, LayerInfo | None]] = []
        outs: list[Any] = []
        counts: dict[str, int] = {}

        def record(path, module, out):
            n = counts.get(path, 0)
            counts[path] = n + 1
            info = None
            if path and _is_array(out):
                info = LayerInfo(path, tuple(out.shape), self._has_params(path, module),
                                 type(module).__name__)
            calls.append((path, n, info))
            outs.append(out if _is_array(out) else None)
            return out

        def f(p, xx):
            calls.clear()
            outs.clear()
            counts.clear()
            sel = select_output(self._raw_apply(p, xx, record), self.output)
            return [sel] + [o for o in outs if o is not None]

        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params)
        closed = jax.make_jaxpr(f)(abstract, jax.ShapeDtypeStruct(x.shape, x.dtype))
        arrays = [(p, n) for (p, n, _), o in zip(calls, outs, strict=True) if o is not None]
        plan = _find_softmax(closed, arrays) if self.softmax != "keep" else _Plan()
        avals = closed.out_avals
        if plan.capture is None:
            seen = calls
            logits = jax.ShapeDtypeStruct(avals[0].shape, avals[0].dtype)
        else:
            seen = calls[: [(p, n) for p, n, _ in calls].index(plan.capture) + 1]
            h = avals[1 + arrays.index(plan.capture)]
            logits = jax.eval_shape(plan.logits, jax.ShapeDtypeStruct(h.shape, h.dtype))
        return plan, logits, [info for _, _, info in seen if info is not None]

    def forward(self, x: jax.Array) -> jax.Array:
        """Logits (B, K) for images (B, H, W, C) with the adapter's own params."""
        return self.apply(self.params, x)

    def layers(self, x: jax.Array) -> list[LayerInfo]:
        """Every submodule call in call-completion order, with its output shape.

        Cached (:func:`cached_shapes`); every :meth:`trace_layers` fills the entry."""
        return list(cached_shapes("layers", self, x, lambda: self.trace_layers(x)[1]))

    def trace_layers(self, x: jax.Array) -> tuple[jax.ShapeDtypeStruct, list[LayerInfo]]:
        """One abstract trace: the logits' shape/dtype and every submodule call. The
        output plan and the layer list from it are cached for :meth:`apply` and
        :meth:`layers`."""
        plan, logits, infos = self._trace_all(self.params, x)
        key = shape_key(self, x)
        if key is not None:
            if self.softmax != "keep":
                _cache.SHAPES.get(("output-plan", key), lambda: plan)
            _cache.SHAPES.get(("layers", key), lambda: infos)
        return logits, infos

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
        out, _ = adapter.trace_layers(x)  # the same trace caches the layer list
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
