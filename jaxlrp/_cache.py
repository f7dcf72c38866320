"""jaxlrp's one compile-cache layer: bounded, weakly keyed, emptied by ``clear_caches()``.

Eager calls of the explainers run their traced implementation through ``jax.jit`` so that
a loop of calls compiles once per shape. Everything that caches lives here:

* :class:`LRU`: a bounded least-recently-used table. Every instance registers itself, and
  :func:`clear_caches` empties them all (and the jitted functions of :func:`register_jit`).
* :func:`key_part`: turns a key object into a hashable key part. Objects that hash by
  value (strings, numbers, frozen dataclasses of those, a flax ``GraphDef``, a Linen
  module) are used as they are; objects that hash by identity or not at all (a user's
  function, a model) are held by a *weak reference*, so a cache never keeps a deleted
  model alive, and an entry whose object died is dropped.
* :func:`partition`: splits a pytree (a composite, a rule, the canonizers) into its
  static part (treedef, floats, strings: the key) and its array leaves (arguments of the
  jitted function, never part of the key): new arrays of the same shapes do not recompile.
* :func:`jit_call`: calls ``impl(*static, *dynamic)`` through a cached ``jax.jit``. The
  jitted function closes over ``impl`` only; ``static`` is handed to it through a
  ``ContextVar`` while it traces, so cached functions hold no model, parameters or
  composite of their own.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

__all__ = ["LRU", "clear_caches", "jit_call", "key_part", "partition", "register_jit"]

_CACHES: list[LRU] = []
_JITS: list[weakref.ref] = []
_REGISTRY_LOCK = threading.Lock()
_DIRTY = [False]  # set when a weakly referenced key object dies; caches purge lazily


def _on_death(_ref: weakref.ref) -> None:
    # Called by the garbage collector, possibly in the middle of a cache operation:
    # only flag; the next access purges.
    _DIRTY[0] = True


class _Weak:
    """A key part that refers to ``obj`` weakly and compares by identity."""

    __slots__ = ("_hash", "ref")

    def __init__(self, obj: Any):
        self.ref = weakref.ref(obj, _on_death)
        self._hash = hash(("weak", id(obj)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Weak):
            return NotImplemented
        obj = self.ref()
        return obj is not None and obj is other.ref()

    def __repr__(self) -> str:
        return f"_Weak({self.ref()!r})"


class _Strong:
    """A key part for an object that neither hashes by value nor takes a weak reference:
    compared by identity and held (the cache is bounded)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return hash(("id", id(self.obj)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Strong) and other.obj is self.obj


def _by_identity(obj: Any) -> Any:
    try:
        return _Weak(obj)
    except TypeError:  # no weak references to this type
        return _Strong(obj)


def key_part(obj: Any) -> Hashable:
    """A hashable stand-in for ``obj`` in a cache key (see the module docstring)."""
    if isinstance(obj, tuple):
        return (type(obj).__name__, *(key_part(o) for o in obj))
    if isinstance(obj, list):
        return ("list", *(key_part(o) for o in obj))
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return ("dict", *((key_part(k), key_part(v)) for k, v in items))
    h = type(obj).__hash__
    if h is None or h is object.__hash__:
        return _by_identity(obj)
    try:
        hash(obj)
    except TypeError:  # e.g. a frozen dataclass holding an array
        return _by_identity(obj)
    return obj


def _weak_parts(key: Any) -> tuple[_Weak, ...]:
    if isinstance(key, _Weak):
        return (key,)
    if isinstance(key, tuple):
        return tuple(w for k in key for w in _weak_parts(k))
    return ()


class LRU:
    """A bounded, thread-safe least-recently-used table, registered for :func:`clear_caches`.

    Keys should be built with :func:`key_part`; an entry whose key holds a weak
    reference to a dead object is dropped.
    """

    def __init__(self, name: str, maxsize: int):
        self.name = name
        self.maxsize = maxsize
        self._data: OrderedDict[Any, tuple[Any, tuple[_Weak, ...]]] = OrderedDict()
        self._lock = threading.RLock()
        with _REGISTRY_LOCK:
            _CACHES.append(self)

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """The value cached under ``key``; ``build()`` it on a miss (errors are not cached)."""
        _purge_dead()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
                return hit[0]
        value = build()
        with self._lock:
            self._data[key] = (value, _weak_parts(key))
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def _purge(self) -> None:
        with self._lock:
            dead = [k for k, (_, ws) in self._data.items() if any(w.ref() is None for w in ws)]
            for k in dead:
                del self._data[k]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        _purge_dead()
        with self._lock:
            return len(self._data)

    def __repr__(self) -> str:
        return f"LRU({self.name!r}, {len(self)}/{self.maxsize})"


def _purge_dead() -> None:
    if _DIRTY[0]:
        _DIRTY[0] = False
        for cache in list(_CACHES):
            cache._purge()


def register_jit(fn: Any) -> Any:
    """Register a module-level ``jax.jit`` function: :func:`clear_caches` clears its cache."""
    with _REGISTRY_LOCK:
        _JITS.append(weakref.ref(fn))
    return fn


def caches() -> dict[str, LRU]:
    """Every registered cache by name (for tests and introspection)."""
    return {c.name: c for c in _CACHES}


def clear_caches() -> None:
    """Empty every jaxlrp cache: compiled explainers, traced shapes, sharded functions.

    The next eager call of an explainer traces and compiles again. Parameters of
    models are never held by these caches (see :mod:`jaxlrp._cache`), so this is only
    needed to release compiled code, e.g. between experiments on many architectures.
    """
    for cache in list(_CACHES):
        cache.clear()
    with _REGISTRY_LOCK:
        alive = [r for r in _JITS if r() is not None]
        _JITS[:] = alive
    for r in alive:
        fn = r()
        if fn is not None and hasattr(fn, "clear_cache"):
            fn.clear_cache()


# ----------------------------------------------------------------------------- pytrees


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


class Static:
    """The static part of a pytree (see :func:`partition`); ``rebuild(arrays)`` restores it."""

    __slots__ = ("key", "leaves", "mask", "treedef")

    def __init__(self, treedef: Any, leaves: list[Any], mask: tuple[bool, ...]):
        self.treedef, self.leaves, self.mask = treedef, leaves, mask
        try:
            hash(treedef)
            tkey: Any = treedef
        except TypeError:  # unhashable static (aux) data
            tkey = _Strong(treedef)
        self.key = ("tree", tkey, mask,
                    tuple(key_part(v) for v, m in zip(leaves, mask, strict=True) if not m))

    def rebuild(self, arrays: Any) -> Any:
        it = iter(arrays)
        leaves = [next(it) if m else v for v, m in zip(self.leaves, self.mask, strict=True)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def partition(tree: Any) -> tuple[Static, list[Any]]:
    """Split ``tree`` into its static part (the cache key) and its array leaves.

    Rules and composites register their array fields (``ZBox`` bounds) as pytree leaves,
    so per-channel bounds travel as arguments of the jitted function and the key holds
    only the treedef and the non-array leaves (floats, strings, functions by weak
    reference).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    mask = tuple(_is_array(v) for v in leaves)
    return Static(treedef, leaves, mask), [v for v, m in zip(leaves, mask, strict=True) if m]


# ----------------------------------------------------------------------------- jitted calls


_STATIC: contextvars.ContextVar[tuple] = contextvars.ContextVar("jaxlrp_jit_static")


def _trampoline(impl: Callable, *dynamic: Any) -> Any:
    return impl(*_STATIC.get(), *dynamic)


def jit_call(cache: LRU, key: Any, impl: Callable, static: tuple, dynamic: tuple,
             **jit_kwargs: Any) -> Any:
    """``impl(*static, *dynamic)`` through the ``jax.jit`` cached in ``cache`` under ``key``.

    ``key`` must determine everything ``impl`` does with ``static`` (build it with
    :func:`key_part` and :func:`partition`); ``dynamic`` are the jitted function's
    arguments (arrays, pytrees of arrays, None). ``impl`` should be a module-level
    function: the cached ``jax.jit`` holds it, and nothing else.
    """
    fn = cache.get(key, lambda: jax.jit(functools.partial(_trampoline, impl), **jit_kwargs))
    token = _STATIC.set(static)
    try:
        return fn(*dynamic)
    finally:
        _STATIC.reset(token)


# The tables of jaxlrp, all in one place.
JIT = LRU("jit", 64)  # eager explainers: lrp, hybrid, the CAM family
SHAPES = LRU("shapes", 128)  # abstract traces: logits shape, layer list, default CAM layer
SHARDED = LRU("sharded", 16)  # distributed.explain_dataset's sharded functions
EVAL_JIT = LRU("evaluate_jit", 32)  # evaluation's jitted explainers
NAMED = LRU("named_explainers", 32)  # evaluation's explainers resolved by name
