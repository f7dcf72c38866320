"""NNX module paths in the jaxpr without patching any class: the per-call copy's
instances get scoped subclasses (see the comment below)."""

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
from flax import nnx

Hook = Callable[[str, Any, Any], Any]



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

