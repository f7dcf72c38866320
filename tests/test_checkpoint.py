"""Checkpoints: round trips, corrupt files, architecture and shape mismatches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp import checkpoint
from jaxlrp.errors import ExplanationError
from jaxlrp.models.resnet import ResNet
from jaxlrp.models.vgg import VGG

_forward = nnx.jit(lambda m, x: m(x))


def _vgg_bn(seed=0):
    """A small VGG with BatchNorm whose running statistics are not the defaults."""
    m = VGG(widths=(4, 8), batch_norm=True, dense=(8,), input_size=16, rngs=nnx.Rngs(seed))
    stats = nnx.state(m, nnx.BatchStat)
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map(lambda a: jnp.asarray(0.5 + rng.random(a.shape), a.dtype),
                                   stats)
    nnx.update(m, stats)
    m.eval()
    return m


X = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))


def test_round_trip_nnx_and_linen(tmp_path):
    model = _vgg_bn()
    path = checkpoint.save(tmp_path / "m.msgpack", model, metadata={"note": "hi"})
    header = checkpoint.read_header(path)
    assert header["architecture"] == "VGG" and header["config"] == model.config()
    assert header["metadata"] == {"note": "hi"}
    back = checkpoint.load(path)
    assert isinstance(back, VGG)
    np.testing.assert_array_equal(_forward(back, X), _forward(model, X))
    lin = checkpoint.load_linen(path)
    np.testing.assert_allclose(lin(X), _forward(model, X), rtol=1e-6, atol=1e-6)
    # a Linen pair saves too and loads back into NNX with the same outputs
    path2 = checkpoint.save(tmp_path / "lin.msgpack", (lin.module, lin.variables))
    np.testing.assert_array_equal(_forward(checkpoint.load(path2), X), _forward(model, X))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_round_trip_resnet_into_template(tmp_path):
    model = ResNet(widths=(4, 8), rngs=nnx.Rngs(1))
    model.eval()
    path = checkpoint.save(tmp_path / "r.msgpack", model)
    template = ResNet(widths=(4, 8), rngs=nnx.Rngs(2))
    x = X[:, :8, :8]
    assert not np.allclose(_forward(template, x), _forward(model, x))
    checkpoint.load(path, model=template)
    np.testing.assert_array_equal(_forward(template, x), _forward(model, x))


def test_missing_file(tmp_path):
    with pytest.raises(ExplanationError, match="no checkpoint file"):
        checkpoint.load(tmp_path / "nope.msgpack")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
def test_corrupt_files(tmp_path, damage):
    path = checkpoint.save(tmp_path / "m.msgpack", _vgg_bn())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "flip":  # one flipped byte inside the array data
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(ExplanationError, match="not a valid jaxlrp checkpoint"):
        checkpoint.load(path)


def test_wrong_architecture_and_shapes(tmp_path):
    path = checkpoint.save(tmp_path / "m.msgpack", _vgg_bn())
    with pytest.raises(ExplanationError, match="holds a VGG model, model= is a ResNet"):
        checkpoint.load(path, model=ResNet(rngs=nnx.Rngs(0)))
    other = VGG(widths=(4, 8), batch_norm=True, dense=(8,), input_size=16, num_classes=5,
                rngs=nnx.Rngs(0))
    with pytest.raises(ExplanationError, match="num_classes=8"):
        checkpoint.load(path, model=other)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    class Tiny(nnx.Module):  # a custom architecture: loaded into a template only
        def __init__(self, n, rngs):
            self.dense = nnx.Linear(3, n, rngs=rngs)

        def __call__(self, x):
            return self.dense(x)

    path = checkpoint.save(tmp_path / "t.msgpack", Tiny(4, nnx.Rngs(0)))
    with pytest.raises(ExplanationError, match="cannot rebuild"):
        checkpoint.load(path)
    with pytest.raises(ExplanationError, match=r"params/dense/bias has shape \(4,\).*\(5,\)"):
        checkpoint.load(path, model=Tiny(5, nnx.Rngs(0)))
    loaded = checkpoint.load(path, model=Tiny(4, nnx.Rngs(1)))
    np.testing.assert_array_equal(loaded.dense.kernel[...],
                                  Tiny(4, nnx.Rngs(0)).dense.kernel[...])


def test_bad_metadata(tmp_path):
    with pytest.raises(ExplanationError, match="metadata"):
        checkpoint.save(tmp_path / "m.msgpack", _vgg_bn(), metadata={"f": object()})
