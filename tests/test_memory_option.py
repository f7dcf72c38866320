"""Memory options: batch chunks and recomputation give the plain call's maps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp._lrp import memory
from jaxlrp._lrp.engine import lrp
from jaxlrp.errors import ExplanationError
from jaxlrp.models.vgg import VGG


def _model() -> VGG:
    return VGG(num_classes=5, widths=(4, 6), dense=(8,), input_size=16, rngs=nnx.Rngs(0))


def _x(b: int = 7) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).random((b, 16, 16, 3)), jnp.float32)


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.abs(b).max())
    assert scale > 0
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("chunk", [3, 20])
def test_lrp_batch_chunk_same_maps(chunk):
    """Chunks of 3 (7 = 2 x 3 + 1: the last chunk padded) and more than the batch."""
    model, x = _model(), _x()
    t = jnp.asarray([0, 1, 2, 3, 4, 0, 1], jnp.int32)
    _close(lrp(model, x, t, batch_chunk=chunk), lrp(model, x, t))
    _close(lrp(model, x, "predicted", batch_chunk=chunk), lrp(model, x, "predicted"))


def test_lrp_batch_chunk_layers_and_jit():
    model, x = _model(), _x()
    full, layers = lrp(model, x, 2, return_layers=True)
    part, layers_c = lrp(model, x, 2, return_layers=True, batch_chunk=2)
    _close(part, full)
    assert [(a.kind, a.path) for a in layers_c] == [(a.kind, a.path) for a in layers]
    for a, b in zip(layers_c, layers, strict=True):
        jax.tree_util.tree_map(_close, a.relevance, b.relevance)
    g, s = nnx.split(model)
    jitted = jax.jit(lambda st, xx: lrp(nnx.merge(g, st), xx, 1, batch_chunk=3))
    _close(jitted(s, x), lrp(model, x, 1))


def test_batch_chunk_bounds_compiled_memory():
    """XLA's own buffer plan: chunks of 2 of a batch of 32 need far less temporary memory."""
    model = VGG(num_classes=5, widths=(8, 8), dense=(8,), input_size=32, rngs=nnx.Rngs(0))
    g, s = nnx.split(model)
    x = jnp.zeros((32, 32, 32, 3), jnp.float32)

    def temp(chunk):
        f = jax.jit(lambda st, xx: lrp(nnx.merge(g, st), xx, 0, batch_chunk=chunk))
        return f.lower(s, x).compile().memory_analysis().temp_size_in_bytes

    full, chunked = temp(None), temp(2)
    assert chunked < 0.5 * full, (chunked, full)


@pytest.mark.slow
def test_checkpoint_same_maps_and_second_order():
    """checkpoint=True: same maps, same gradient of the map; the rules are rematerialised."""
    model, x = _model(), _x(3)
    _close(lrp(model, x, 1, checkpoint=True), lrp(model, x, 1))

    def loss(xx, ck):
        return jnp.sum(jnp.tanh(lrp(model, xx, 1, checkpoint=ck)) ** 2)

    _close(jax.grad(loss)(x, True), jax.grad(loss)(x, False))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda xx: loss(xx, True)))(x))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    assert "remat" not in str(jax.make_jaxpr(jax.grad(lambda xx: loss(xx, False)))(x))


@pytest.mark.parametrize("target", ["predicted", 3, "array"])
def test_chunked_hybrid_same_maps(target):
    model, x = _model(), _x(5)
    if target == "array":
        target = jnp.asarray([4, 3, 2, 1, 0], jnp.int32)
    _close(memory.chunked(jaxlrp.hybrid, 2)(model, x, target), jaxlrp.hybrid(model, x, target))


def test_bad_options():
    model, x = _model(), _x(2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ExplanationError, match="batch_chunk"):
            lrp(model, x, batch_chunk=bad)
    with pytest.raises(ExplanationError, match="chunk_size"):
        memory.chunked(jaxlrp.hybrid, 0)
    with pytest.raises(ExplanationError, match="target"):
        memory.chunked(jaxlrp.hybrid, 1)(model, x, "best")
