"""EfficientNet-Lite0 with the shipped ImageNet weights, preprocessing and bundled photos.

No torch here: the weights, labels and class names are shipped assets.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp import photos
from jaxlrp._cam_core import default_cam_layer
from jaxlrp._tracing import as_adapter
from jaxlrp.errors import ExplanationError
from jaxlrp.models import efficientnet as eff
from jaxlrp.models import efficientnet_lite0, imagenet_classes, preprocess

N_PARAMS = 4_652_008  # sum of numel over the torch model's parameters (buffers excluded)


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def shots():
    return photos.load()


@pytest.fixture(scope="module")
def logits(model, shots):
    x = jnp.concatenate([preprocess(p.image) for p in shots])
    return np.asarray(jax.jit(lambda m, x: m(x))(model, x))


@pytest.mark.slow
def test_top1_on_bundled_photos(shots, logits):
    classes = imagenet_classes()
    assert logits.shape == (len(shots), 1000)
    assert np.all(np.isfinite(logits))
    got = {p.name: int(i) for p, i in zip(shots, logits.argmax(1), strict=True)}
    assert got == {p.name: p.label for p in shots}
    assert got["chelsea"] == 285 and got["coffee"] == 967
    for p in shots:
        assert p.label_name == classes[p.label]


def test_classes_and_photos():
    classes = imagenet_classes()
    assert len(classes) == 1000 == len(set(classes))
    assert classes[285] == "Egyptian cat" and classes[967] == "espresso"
    assert photos.names() == ["chelsea", "coffee", "astronaut", "rocket"]
    (coffee,) = photos.load("coffee")
    assert coffee.image.dtype == np.uint8 and coffee.image.ndim == 3
    assert coffee.image.shape[2] == 3 and min(coffee.image.shape[:2]) == 256
    with pytest.raises(ExplanationError, match="names"):
        photos.load(["chelsea", "dog"])


def test_architecture(model):
    n = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == N_PARAMS
    assert len(model.blocks) == 16
    assert sum(b.residual for b in model.blocks) == 9
    assert model.blocks[0].expand is None
    assert model.blocks[3].depthwise.conv.kernel.shape == (5, 5, 1, 144)  # depthwise
    assert model.blocks[3].depthwise.conv.feature_group_count == 144


def test_cam_layer_is_head(model):
    adapter = as_adapter(model)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    assert default_cam_layer(adapter, x) == "head"
    shapes = {info.path: info.shape for info in adapter.layers(x)}
    assert shapes["head"] == (1, 7, 7, 1280)
    assert shapes["stem"] == (1, 112, 112, 32)


def test_stem_uses_tf_same_padding(model):
    # TF "SAME" for a 3x3 stride-2 conv on 224 px pads 0 before and 1 after; the
    # symmetric torch-style padding (1, 1) must give a different result.
    x = jax.random.normal(jax.random.key(0), (1, 224, 224, 3))
    got = model.stem.conv(x)
    k = model.stem.conv.kernel[...]
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(pad):
        return jax.lax.conv_general_dilated(x, k, (2, 2), pad, dimension_numbers=dn)

    np.testing.assert_allclose(got, conv(((0, 1), (0, 1))), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got - conv(((1, 1), (1, 1)))).max()) > 1e-2


def test_preprocess_values():
    assert eff.INPUT_LOW == pytest.approx(-127 / 128) and eff.INPUT_HIGH == 1.0
    for value, want in [(0, eff.INPUT_LOW), (127, 0.0), (255, eff.INPUT_HIGH)]:
        out = preprocess(np.full((50, 80, 3), value, np.uint8))
        assert out.shape == (1, 224, 224, 3) and out.dtype == jnp.float32
        np.testing.assert_allclose(out, want, atol=1e-6)
    img = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    np.testing.assert_allclose(preprocess(img), preprocess(img.astype(np.float32) / 255),
                               atol=1e-6)
    batch = np.stack([img, img[::-1]])
    out = preprocess(batch, size=64)
    assert out.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(out[1], preprocess(img[::-1], size=64)[0], atol=1e-6)


def test_preprocess_center_crops():
    # 100x300: black | white | black thirds. Shorter side -> 224 makes it 224x672 and the
    # centre crop is the white third (antialiasing blurs only the crop's edges).
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255
    out = np.asarray(preprocess(img))[0]
    assert out.min() >= eff.INPUT_LOW - 1e-6 and out.max() <= eff.INPUT_HIGH + 1e-6
    np.testing.assert_allclose(out[:, 8:-8], eff.INPUT_HIGH, atol=1e-5)
    tall = np.transpose(img, (1, 0, 2))
    np.testing.assert_allclose(np.asarray(preprocess(tall))[0][8:-8], eff.INPUT_HIGH, atol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((64, 64), np.uint8), r"image.*\(H, W, 3\)"),
        (np.zeros((64, 64, 4), np.uint8), r"image.*\(H, W, 3\)"),
        (np.zeros((2, 3, 64, 64, 3), np.uint8), r"image.*\(H, W, 3\)"),
        (np.zeros((20, 64, 3), np.uint8), r"image.*too small"),
        (np.full((64, 64, 3), 2.0, np.float32), r"image.*\[0, 1\]"),
        (np.zeros((64, 64, 3), np.int64), r"image.*uint8"),
        ([np.zeros((64, 64, 3), np.uint8)], r"image"),
    ],
)
def test_preprocess_errors(bad, match):
    with pytest.raises(ExplanationError, match=match):
        preprocess(bad)


def test_preprocess_size_error():
    with pytest.raises(ExplanationError, match="size"):
        preprocess(np.zeros((64, 64, 3), np.uint8), size=8)


def test_weights_file_errors(tmp_path):
    with pytest.raises(ExplanationError, match="does not exist"):
        eff.load_weights(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ExplanationError, match="not a readable"):
        eff.load_weights(junk)
    src = eff.weights_path()
    data = bytearray(src.read_bytes())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ExplanationError, match="not a readable"):
        eff.load_weights(truncated)
    flipped = tmp_path / "flipped.safetensors"
    data[-1000] ^= 0xFF  # one byte inside the tensor data
    flipped.write_bytes(bytes(data))
    with pytest.raises(ExplanationError, match="corrupt"):
        eff.load_weights(flipped)
    good = tmp_path / "good.safetensors"
    shutil.copy(src, good)
    assert isinstance(eff.load_weights(good), eff.EfficientNetLite0)


def test_flat_state_errors_and_num_classes(model):
    flat = eff.flat_state(model)
    assert set(flat) == set(eff.expected_shapes())
    bad = dict(flat)
    del bad["blocks/5/project/bn/var"]
    with pytest.raises(ExplanationError, match="blocks/5/project/bn/var"):
        eff.from_flat_state(bad)
    bad = dict(flat, **{"blocks/0/expand/conv/kernel": np.zeros((1, 1, 32, 32), np.float32)})
    with pytest.raises(ExplanationError, match="unexpected key 'blocks/0/expand/conv/kernel'"):
        eff.from_flat_state(bad)
    bad = dict(flat, **{"head/conv/kernel": np.zeros((1, 1, 320, 1000), np.float32)})
    with pytest.raises(ExplanationError, match="head/conv/kernel"):
        eff.from_flat_state(bad)
    small = dict(flat)
    small["classifier/kernel"] = flat["classifier/kernel"][:, :10]
    small["classifier/bias"] = flat["classifier/bias"][:10]
    m10 = eff.from_flat_state(small)  # num_classes read from classifier/kernel
    assert m10.num_classes == 10
    out = nnx.eval_shape(lambda m: m(jnp.zeros((2, 224, 224, 3))), m10)
    assert out.shape == (2, 10)
    np.testing.assert_array_equal(m10.classifier.kernel[...], small["classifier/kernel"])
    np.testing.assert_array_equal(m10.head.bn.var[...], flat["head/bn/var"])


def test_abstract_structure_with_fixed_keys_equals_the_one_with_rngs(monkeypatch):
    """The weight loader's abstract model (traced with one fixed key) has the structure
    and shapes that nnx.Rngs gives, and falls back to nnx.Rngs when layers want more."""
    import re

    import jax
    from flax import nnx

    from jaxlrp.models import efficientnet as E

    def shape_of(graphdef, state):
        return (re.sub(r" at 0x[0-9a-f]+", "", str(graphdef)),
                [(v.shape, v.dtype) for v in jax.tree.leaves(state)])

    E._abstract.cache_clear()
    fixed = shape_of(*E._abstract(7)[:2])
    ref = nnx.eval_shape(lambda: E.EfficientNetLite0(
        7, rngs=nnx.Rngs(0), kernel_init=nnx.initializers.zeros_init()))
    assert fixed == shape_of(*nnx.split(ref))

    def refuse(self):
        raise AttributeError("params")

    monkeypatch.setattr(E._FixedKey, "params", refuse)
    E._abstract.cache_clear()
    assert shape_of(*E._abstract(7)[:2]) == fixed
    E._abstract.cache_clear()
