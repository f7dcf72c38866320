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
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

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
    """Bind a Linen module to its variables: ``jaxlrp.linen(module, variables, train=False)``."""
    return LinenModel(module, variables, tuple(sorted(apply_kwargs.items())))


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A submodule call seen while tracing: its path, output shape and whether it has params."""

    path: str
    shape: tuple[int, ...]
    has_params: bool
    type_name: str


class Adapter:
    """A uniform, functional view of an NNX or Linen model (see module docstring)."""

    kind: str
    params: Any

    def apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> jax.Array:
        raise NotImplementedError

    def forward(self, x: jax.Array) -> jax.Array:
        """Logits (B, K) for images (B, H, W, C) with the adapter's own params."""
        return self.apply(self.params, x)

    def layers(self, x: jax.Array) -> list[LayerInfo]:
        """Every submodule call in call-completion order, with its output shape."""
        seen: list[LayerInfo] = []

        def record(path, module, out):
            if path and hasattr(out, "shape"):
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
    """Adapter for a ``flax.nnx.Module``; runs it in evaluation mode on a copy."""

    kind = "nnx"

    def __init__(self, model: nnx.Module):
        self.graphdef, self.params = nnx.split(model)

    def _merged(self, params: Any) -> nnx.Module:
        m = nnx.merge(self.graphdef, params)
        m.eval()
        return m

    def apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> jax.Array:
        m = self._merged(params)
        if hook is None:
            with _nnx_scopes(m, None):
                return m(x)
        with _nnx_scopes(m, hook):
            return m(x)

    def _has_params(self, path: str, module: Any) -> bool:
        return len(jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))) > 0


class LinenAdapter(Adapter):
    """Adapter for a :class:`LinenModel` (a Linen module with its variables)."""

    kind = "linen"

    def __init__(self, model: LinenModel):
        self.module = model.module
        self.params = model.variables
        self.apply_kwargs = dict(model.apply_kwargs)

    def apply(self, params: Any, x: jax.Array, hook: Hook | None = None) -> jax.Array:
        if hook is None:
            return self.module.apply(params, x, **self.apply_kwargs)

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name != "__call__":
                return out
            path = "/".join(str(p) for p in context.module.path)
            h = _effective_hook(hook)  # see hook_filter
            return out if h is None else h(path, context.module, out)

        with nn.intercept_methods(interceptor):
            return self.module.apply(params, x, **self.apply_kwargs)

    def _has_params(self, path: str, module: Any) -> bool:
        node = self.params.get("params", {}) if hasattr(self.params, "get") else {}
        for part in path.split("/"):
            if not hasattr(node, "get") or part not in node:
                return False
            node = node[part]
        return len(jax.tree_util.tree_leaves(node)) > 0


def as_adapter(model: Any, name: str = "model") -> Adapter:
    """Wrap ``model`` (an NNX module, a :class:`LinenModel` or a ``(module, variables)`` pair)."""
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


def default_cam_layer(adapter: Adapter, x: jax.Array) -> str:
    """The last submodule with parameters whose output is a spatial map (B, H, W, C), H*W > 1."""
    cands = [
        info for info in adapter.layers(x)
        if len(info.shape) == 4 and info.shape[1] * info.shape[2] > 1 and info.has_params
    ]
    if not cands:
        raise ExplanationError(
            "layer: the model has no submodule with a spatial (B, H, W, C) output; "
            "name a layer explicitly (see jaxlrp.layers(model, x))"
        )
    return cands[-1].path


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
