"""Eager explainer calls in a loop compile once and leak no device buffers.

Compilations are counted with a ``jax.monitoring`` listener on the backend-compile
event, which jax 0.10 records once per XLA compilation (cache hits record nothing).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlrp._hybrid import hybrid
from jaxlrp._lrp.engine import lrp
from jaxlrp.cam import gradcam_pp
from jaxlrp.models.vgg import VGG, nnx_to_linen

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CALLS = 200
_COMPILES: list[str] = []


def _listener(event: str, duration: float, **kwargs) -> None:
    if event == COMPILE_EVENT:
        _COMPILES.append(str(kwargs.get("fun_name")))


jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.fixture(scope="module")
def model():
    return VGG(num_classes=5, widths=(4, 8), dense=(16,), input_size=16, rngs=nnx.Rngs(0))


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((2, 16, 16, 3), dtype=np.float32) for _ in range(n)]


def _loop(fn, model, xs) -> dict:
    """Call ``fn`` eagerly on fresh inputs and changing targets; count compiles and buffers."""
    out = fn(model, xs[0], 0)
    jax.block_until_ready(out)
    first = len(_COMPILES)
    live = {}
    for i, x in enumerate(xs[1:], start=1):
        target = i % 5 if i % 2 else np.array([i % 5, (i + 1) % 5], np.int32)
        out = fn(model, x, target)
        if i in (10, len(xs) - 1):
            jax.block_until_ready(out)
            live[i] = len(jax.live_arrays())
    jax.block_until_ready(out)
    return {"compiles": len(_COMPILES) - first, "live_mid": live[10],
            "live_end": live[len(xs) - 1], "names": _COMPILES[first:]}


def _hybrid(model, x, target):
    return hybrid(model, x, target)


def _lrp(model, x, target):
    return lrp(model, x, target)


@pytest.mark.parametrize("fn", [gradcam_pp, _lrp, _hybrid], ids=["gradcam_pp", "lrp", "hybrid"])
def test_eager_loop_compiles_once_and_keeps_buffers_flat(model, fn):
    stats = _loop(fn, model, _inputs(CALLS))
    # After the first call, new inputs with the same shapes and new target values
    # (ints or arrays) hit the cached executable: no further compilation at all.
    assert stats["compiles"] == 0, stats["names"]
    # Only the latest result (and the model's own arrays) stay alive.
    assert stats["live_end"] <= stats["live_mid"], stats


def test_linen_model_eager_loop(model):
    pair = nnx_to_linen(model)
    stats = _loop(_lrp, pair, _inputs(20))
    assert stats["compiles"] == 0, stats["names"]
    assert stats["live_end"] <= stats["live_mid"], stats


def test_new_batch_size_compiles_again_then_stays(model):
    """The counter does see compilations: a new shape compiles, its repeat does not."""
    x3 = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    before = len(_COMPILES)
    jax.block_until_ready(_lrp(model, x3, 1))
    mid = len(_COMPILES)
    jax.block_until_ready(_lrp(model, x3 + 0.1, 2))
    assert mid > before
    assert len(_COMPILES) == mid


# ----------------------------------------------------------------------------- one cache layer

import functools  # noqa: E402
import gc  # noqa: E402
import threading  # noqa: E402
import weakref  # noqa: E402

import jaxlrp  # noqa: E402
from jaxlrp import _cache  # noqa: E402
from jaxlrp import _tracing as tracing  # noqa: E402
from jaxlrp._lrp import composites as K  # noqa: E402
from jaxlrp._lrp import rules as R  # noqa: E402

JIT_NAME = "jit(_trampoline)"  # the cached eager explainers (jaxlrp._cache.jit_call)
LOW = np.array([-1.0, -2.0, -3.0], np.float32)
HIGH = np.array([1.0, 2.0, 3.0], np.float32)


def _cam_case(name, m, x, i):
    return getattr(jaxlrp, name)(m, x, 1)


def _paths_map():
    return K.layer_map(conv=R.ZPlus(), dense=R.Epsilon(), paths={"classifier": R.Epsilon(0.0)})


CASES = {
    # a fresh composite with NEW per-channel array bounds on every call
    "lrp_box_arrays": lambda m, x, i: jaxlrp.lrp(m, x, 1, K.epsilon_gamma_box(LOW * i, HIGH * i)),
    "lrp_paths": lambda m, x, i: jaxlrp.lrp(m, x, 1, _paths_map()),
    "hybrid": lambda m, x, i: jaxlrp.hybrid(m, x, 1),
    "hybrid_box_arrays": lambda m, x, i: jaxlrp.hybrid(
        m, x, 1, composite=K.epsilon_gamma_box(LOW * i, HIGH * i)),
    **{name: functools.partial(_cam_case, name)
       for name in ("gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam")},
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_compile_over_eager_calls(model, case):
    """From an empty cache, four eager calls (new composite objects, new array values)
    compile the explainer exactly once (before the cache layer: lrp/hybrid with array
    bounds or layer_map(paths=...) compiled on every call)."""
    xs = _inputs(4)
    jaxlrp.clear_caches()
    before = len(_COMPILES)
    for i, x in enumerate(xs, start=1):
        jax.block_until_ready(CASES[case](model, x, i))
    names = _COMPILES[before:]
    assert names.count(JIT_NAME) == 1, names


def test_array_bounds_are_arguments_not_constants(model):
    """Cached calls with new bound arrays use the new values: each equals the traced
    (uncached) computation with the same bounds."""
    x = _inputs(1)[0]
    out = []
    for scale in (1.0, 3.0):
        comp = K.epsilon_gamma_box(LOW * scale, HIGH * scale)
        eager = jaxlrp.lrp(model, x, 1, comp)
        traced = jax.jit(lambda xx, c=comp: jaxlrp.lrp(model, xx, 1, c))(x)
        np.testing.assert_allclose(eager, traced, rtol=1e-5, atol=1e-6)
        out.append(np.asarray(eager))
    assert np.max(np.abs(out[0] - out[1])) > 1e-4


def test_composites_are_values():
    a, b = K.epsilon_gamma_box(0.0, 1.0), K.epsilon_gamma_box(0.0, 1.0)
    assert a == b and hash(a) == hash(b)
    p, q = _paths_map(), _paths_map()
    assert p == q and hash(p) == hash(q)
    sa, arrays_a = _cache.partition(K.epsilon_gamma_box(LOW, HIGH))
    sb, arrays_b = _cache.partition(K.epsilon_gamma_box(LOW * 2, HIGH * 2))
    assert sa.key == sb.key and hash(sa.key) == hash(sb.key)
    assert len(arrays_a) == 2 and arrays_b[0] is not LOW


@pytest.mark.slow
def test_deleted_model_is_freed():
    """Caches hold no model and no parameters: after ``del`` the model and its arrays die."""
    m = VGG(num_classes=3, widths=(4,), dense=(8,), input_size=16, rngs=nnx.Rngs(7))
    x = _inputs(1)[0]
    comp = lambda ctx: R.Epsilon() if ctx.kind in ("conv", "dense") else None  # noqa: E731
    jax.block_until_ready(jaxlrp.lrp(m, x, 1, comp))
    jax.block_until_ready(jaxlrp.hybrid(m, x, 1))
    jax.block_until_ready(jaxlrp.gradcam(m, x, 1))
    leaf = jax.tree_util.tree_leaves(tracing.as_adapter(m).params)[0]
    refs = [weakref.ref(m), weakref.ref(leaf), weakref.ref(comp)]
    size = len(_cache.JIT)
    del m, leaf, comp
    gc.collect()
    assert [r() is None for r in refs] == [True, True, True]
    # the entry keyed on the dead composite function is dropped
    assert len(_cache.JIT) == size - 1


def test_clear_caches_empties_everything(model):
    x = _inputs(1)[0]
    jax.block_until_ready(jaxlrp.lrp(model, x, 1))
    jax.block_until_ready(jaxlrp.gradcam(model, x, 1))
    assert len(_cache.JIT) > 0 and len(_cache.SHAPES) > 0
    jaxlrp.clear_caches()
    assert {name: len(c) for name, c in _cache.caches().items()} == {
        name: 0 for name in _cache.caches()}
    before = len(_COMPILES)
    jax.block_until_ready(jaxlrp.lrp(model, x, 1))
    assert _COMPILES[before:].count(JIT_NAME) == 1  # compiled again


@pytest.mark.slow
def test_caches_are_bounded(model):
    x = _inputs(1)[0]
    jaxlrp.clear_caches()
    for i in range(_cache.JIT.maxsize + 3):
        jaxlrp.lrp(model, x, 1, K.epsilon(1e-3 * (i + 1)))
    assert len(_cache.JIT) == _cache.JIT.maxsize


# ----------------------------------------------------------------------------- no class patching


def test_user_classes_untouched_while_tracing(model):
    """During an NNX trace (inside a hook), the user's model, its classes and flax's
    classes are the originals, and another thread calling the user's model sees them."""
    x = _inputs(1)[0]
    sub = model.features[0]
    cls, call = type(sub), type(sub).__call__
    conv_call, linear_call = nnx.Conv.__call__, nnx.Linear.__call__
    ref = np.asarray(model(x))
    seen = {}

    def other_thread():
        seen["class"] = type(model.features[0])
        seen["call"] = type(model.features[0]).__call__
        seen["out"] = np.asarray(model(x))
        jaxpr = jax.make_jaxpr(model)(x)
        seen["stacks"] = {str(e.source_info.name_stack) for e in jaxpr.jaxpr.eqns}

    def hook(path, module, out):
        if path == "features/0":
            seen["during"] = (type(sub), type(sub).__call__, nnx.Conv.__call__,
                              nnx.Linear.__call__, type(module) is not cls,
                              isinstance(module, cls))
            th = threading.Thread(target=other_thread)
            th.start()
            th.join()
        return out

    jax.make_jaxpr(lambda xx: tracing.as_adapter(model).apply(
        tracing.as_adapter(model).params, xx, hook=hook))(x)
    assert seen["during"] == (cls, call, conv_call, linear_call, True, True)
    assert seen["class"] is cls and seen["call"] is call
    np.testing.assert_allclose(seen["out"], ref, rtol=1e-6)
    assert seen["stacks"] == {""}  # the other thread's trace is not scoped
    assert type(sub) is cls and type(sub).__call__ is call
    assert nnx.Conv.__call__ is conv_call and nnx.Linear.__call__ is linear_call
    assert not hasattr(tracing, "_LOCK")


def test_name_stacks_carry_module_paths(model):
    x = _inputs(1)[0]
    adapter = tracing.as_adapter(model)
    jaxpr = jax.make_jaxpr(adapter.apply)(adapter.params, x)
    stacks = {str(e.source_info.name_stack) for e in jaxpr.jaxpr.eqns
              if e.primitive.name in ("conv_general_dilated", "dot_general")}
    assert {"features/0/conv", "features/1/conv"} <= stacks, stacks


@pytest.mark.slow
def test_sharded_cache_is_weakly_keyed_on_the_explainer(model):
    """distributed.explain_dataset caches its sharded function in jaxlrp._cache.SHARDED,
    keyed weakly on the explainer: a deleted explainer's entry is dropped."""
    from jaxlrp.distributed import explain_dataset

    x = np.concatenate(_inputs(2))
    explain = lambda m, xx, t: jaxlrp.gradcam(m, xx, t)  # noqa: E731
    jaxlrp.clear_caches()
    before = len(_COMPILES)
    for _ in range(2):
        maps = explain_dataset(explain, model, x, chunk_size=2, target="predicted",
                               progress=False)
    assert _COMPILES[before:].count(JIT_NAME) == 1 and len(_cache.SHARDED) == 1
    assert maps.shape == (4, 16, 16)
    np.testing.assert_allclose(maps, jaxlrp.gradcam(model, x), atol=1e-5)
    ref = weakref.ref(explain)
    del explain
    gc.collect()
    assert ref() is None and len(_cache.SHARDED) == 0
