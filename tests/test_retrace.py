"""Eager explainer calls in a loop compile once and leak no device buffers.

Compilations are counted with a ``jax.monitoring`` listener on the backend-compile
event, which jax 0.10 records once per XLA compilation (cache hits record nothing).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlrp.cam import gradcam_pp
from jaxlrp.hybrid import hybrid
from jaxlrp.lrp.engine import lrp
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
