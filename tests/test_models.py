"""Reference models: NNX and Linen twins agree, input checks, the shipped default model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp._tracing import layers, linen
from jaxlrp.errors import ExplanationError
from jaxlrp.models import resnet as resnet_mod
from jaxlrp.models import vgg as vgg_mod
from jaxlrp.models.resnet import ResNet, ResNetLinen
from jaxlrp.models.vgg import VGG, VGGLinen

_forward = nnx.jit(lambda m, x: m(x))


def _randomize_1d(model, seed):
    """Non-trivial biases and BatchNorm scale/bias/mean/var (positive: var > 0)."""
    state = nnx.state(model)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(0.5 + rng.random(a.shape), a.dtype) if a.ndim == 1 else a
              for a in leaves]
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
    model.eval()
    return model


CASES = [
    ("vgg", lambda: VGG(widths=(4, 8), dense=(8,), input_size=16, rngs=nnx.Rngs(0)),
     vgg_mod, (2, 16, 16, 3)),
    ("vgg_bn", lambda: VGG(widths=(4, 8), convs_per_block=2, batch_norm=True, dense=(8, 6),
                           input_size=(16, 8), in_channels=2, rngs=nnx.Rngs(1)),
     vgg_mod, (2, 16, 8, 2)),
    ("resnet", lambda: ResNet(widths=(4, 8), blocks_per_stage=2, rngs=nnx.Rngs(2)),
     resnet_mod, (2, 12, 10, 3)),
]


@pytest.mark.parametrize("name,make,mod,shape", CASES, ids=[c[0] for c in CASES])
def test_nnx_and_linen_agree(name, make, mod, shape):
    model = _randomize_1d(make(), seed=3)
    x = jax.random.uniform(jax.random.key(0), shape)
    module, variables = mod.nnx_to_linen(model)
    ours = _forward(model, x)
    theirs = jax.jit(lambda v, x: module.apply(v, x))(variables, x)
    # the same operations in the same order: identical up to XLA fusion choices
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-6)
    # Linen's own init has exactly the same tree of names and shapes
    init = module.init(jax.random.key(1), x)
    assert jax.tree_util.tree_map(jnp.shape, init) == jax.tree_util.tree_map(jnp.shape, variables)
    # the same submodule paths, so layer= names work for both
    nnx_paths = [info.path for info in layers(model, shape)]
    linen_paths = [info.path for info in layers(linen(module, variables), shape)]
    assert nnx_paths == linen_paths
    # and back to NNX
    back = mod.linen_to_nnx(module, variables)
    np.testing.assert_array_equal(_forward(back, x), ours)


def test_vgg_structure_and_cam_paths():
    model = VGG(widths=(4, 8, 8), convs_per_block=2, dense=(8,), input_size=32, rngs=nnx.Rngs(0))
    info = {i.path: i for i in layers(model, (1, 32, 32, 3))}
    assert info["features/1"].shape == (1, 32, 32, 4)  # before the first pool
    assert info["features/5"].shape == (1, 8, 8, 8)
    assert info["classifier/0"].shape == (1, 8) and info["head"].shape == (1, 8)
    assert model.pool_after == (1, 3, 5)
    # each block's output is post-ReLU
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    out = model.features[0](x)
    assert float(out.min()) == 0.0 and float(out.max()) > 0


def test_vgg_matches_hand_computation():
    """One conv block + head, weights set by hand, checked against numpy."""
    model = VGG(num_classes=2, widths=(1,), dense=(), input_size=2, in_channels=1,
                rngs=nnx.Rngs(0))
    k = np.zeros((3, 3, 1, 1), np.float32)
    k[1, 1, 0, 0] = 2.0  # centre tap: conv(x) = 2x
    model.features[0].conv.kernel[...] = jnp.asarray(k)
    model.features[0].conv.bias[...] = jnp.asarray([-1.0])
    model.head.kernel[...] = jnp.asarray([[1.0, -1.0]])
    model.head.bias[...] = jnp.asarray([0.5, 0.0])
    x = np.array([0.1, 0.9, 0.3, 0.7], np.float32).reshape(1, 2, 2, 1)
    pooled = np.maximum(2 * x - 1, 0).max()  # relu then 2x2 max-pool = 0.8
    np.testing.assert_allclose(model(jnp.asarray(x)), [[pooled + 0.5, -pooled]], rtol=1e-6)


def test_resnet_strides_and_downsample():
    model = ResNet(widths=(4, 8, 16), rngs=nnx.Rngs(0))
    info = {i.path: i.shape for i in layers(model, (1, 16, 16, 3))}
    assert info["layer1/0"] == (1, 16, 16, 4)
    assert info["layer2/0"] == (1, 8, 8, 8) and info["layer3/0"] == (1, 4, 4, 16)
    assert model.layer1[0].downsample is None and model.layer2[0].downsample is not None
    # a block with zeroed residual branch and identity shortcut is relu(x)
    block = resnet_mod.BasicBlock(4, 4, 1, rngs=nnx.Rngs(0))
    block.bn2.scale[...] = jnp.zeros(4)
    block.eval()
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 4))
    np.testing.assert_allclose(block(x), jax.nn.relu(x), atol=1e-6)


def test_bad_inputs_raise():
    vgg = VGG(widths=(4,), dense=(), input_size=8, rngs=nnx.Rngs(0))
    with pytest.raises(ExplanationError, match=r"x: .*\(B, 8, 8, 3\).*\(8, 8, 3\)"):
        vgg(jnp.zeros((8, 8, 3)))
    with pytest.raises(ExplanationError, match=r"x: .*\(B, 8, 8, 3\).*\(1, 8, 8, 1\)"):
        vgg(jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ExplanationError, match=r"x: .*\(1, 16, 16, 3\)"):
        vgg(jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ExplanationError, match=r"x: ResNet expects .*\(B, H, W, 3\)"):
        ResNet(widths=(4,), rngs=nnx.Rngs(0))(jnp.zeros((1, 8, 8, 4)))
    lin = VGGLinen(widths=(4,), dense=(), input_size=8)
    with pytest.raises(ExplanationError, match="x: VGGLinen"):
        lin.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))
    with pytest.raises(ExplanationError, match="input_size"):
        VGG(widths=(4, 4, 4, 4, 4), input_size=16, rngs=nnx.Rngs(0))
    with pytest.raises(ExplanationError, match="widths"):
        ResNetLinen(widths=()).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ExplanationError, match="num_classes"):
        ResNet(num_classes=0, rngs=nnx.Rngs(0))


def test_linen_variables_mismatch_is_named():
    model = VGG(widths=(4,), dense=(), input_size=8, rngs=nnx.Rngs(0))
    _, variables = vgg_mod.nnx_to_linen(model)
    variables["params"]["head"]["kernel"] = jnp.zeros((3, 3))
    with pytest.raises(ExplanationError, match=r"params/head/kernel has shape \(3, 3\)"):
        vgg_mod.linen_to_nnx(VGGLinen(widths=(4,), dense=(), input_size=8), variables)
    del variables["params"]["head"]
    with pytest.raises(ExplanationError, match="missing key params/head"):
        vgg_mod.linen_to_nnx(VGGLinen(widths=(4,), dense=(), input_size=8), variables)


def test_init_is_seeded_he_normal():
    a = VGG(widths=(32,), dense=(), input_size=8, rngs=nnx.Rngs(0))
    b = VGG(widths=(32,), dense=(), input_size=8, rngs=nnx.Rngs(0))
    c = VGG(widths=(32,), dense=(), input_size=8, rngs=nnx.Rngs(1))
    ka = np.asarray(a.features[0].conv.kernel[...])
    np.testing.assert_array_equal(ka, b.features[0].conv.kernel[...])
    assert not np.allclose(ka, c.features[0].conv.kernel[...])
    assert abs(ka.std() - np.sqrt(2 / 27)) < 0.1 * np.sqrt(2 / 27)
    # under tracing (eval_shape) the model still builds
    abstract = nnx.eval_shape(lambda: VGG(widths=(32,), dense=(), input_size=8,
                                          rngs=nnx.Rngs(0)))
    assert abstract.features[0].conv.kernel.shape == (3, 3, 3, 32)


def test_flip_rotate_keeps_pixels():
    from jaxlrp.models.default import flip_rotate

    x = np.random.default_rng(0).random((16, 6, 6, 3), dtype=np.float32)
    y = flip_rotate(np.random.default_rng(1), x)
    assert y.shape == x.shape
    for a, b in zip(x, y, strict=True):  # each output is one of the 8 dihedral images of its input
        variants = [np.rot90(v, k) for v in (a, a[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(b, v) for v in variants)
    assert not np.array_equal(x, y)


def test_shipped_default_model():
    from jaxlrp import checkpoint
    from jaxlrp.data import embedded
    from jaxlrp.models import default_model, load_default_model
    from jaxlrp.models.default import DEFAULT_PATH
    from jaxlrp.training import evaluate_accuracy

    assert DEFAULT_PATH.stat().st_size < 5 * 2**20
    header = checkpoint.read_header(DEFAULT_PATH)
    assert header["architecture"] == "VGG"
    model = default_model()
    assert isinstance(model, VGG) and model.config() == header["config"]
    # a fresh sample: the test split with seed 7 (training used the train split, seed 0)
    test = embedded("test", n=600, seed=7)
    assert evaluate_accuracy(model, test) >= 0.95
    # every call returns an independent module
    other = load_default_model()
    other.head.bias[...] = other.head.bias[...] + 100.0
    assert float(jnp.abs(default_model().head.bias[...] - model.head.bias[...]).max()) == 0.0
    with pytest.raises(ExplanationError, match="no checkpoint file"):
        load_default_model("/nonexistent/default.msgpack")
