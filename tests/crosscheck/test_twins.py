"""The PyTorch twins (jaxlrp.twins) compute the same logits as the Flax models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torchvision.models.resnet import BasicBlock

from jaxlrp.errors import ExplanationError
from jaxlrp.models.resnet import ResNet
from jaxlrp.models.resnet import nnx_to_linen as resnet_to_linen
from jaxlrp.models.vgg import VGG
from jaxlrp.models.vgg import nnx_to_linen as vgg_to_linen
from jaxlrp.twins import from_torch_map, to_torch, to_torch_input

pytestmark = pytest.mark.crosscheck

_forward = nnx.jit(lambda model, x: model(x))  # one compilation per model, not one per op


def _randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Give every array (BatchNorm statistics included) non-trivial values."""
    state = nnx.state(model)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    rng = np.random.default_rng(seed)
    new = []
    for leaf in leaves:
        if leaf.ndim == 1:  # biases, BN scale/bias/mean/var: positive values keep var > 0
            new.append(jnp.asarray(0.5 + rng.random(leaf.shape), leaf.dtype))
        else:
            new.append(leaf)
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, new))
    model.eval()
    return model


MODELS = {
    "vgg": lambda: VGG(widths=(8, 16, 16), dense=(32,), input_size=32, rngs=nnx.Rngs(0)),
    "vgg_bn": lambda: VGG(widths=(8, 16), convs_per_block=2, batch_norm=True, dense=(32, 16),
                          input_size=(32, 24), rngs=nnx.Rngs(1)),
    "vgg_nodense": lambda: VGG(widths=(8, 16), dense=(), input_size=16, rngs=nnx.Rngs(2)),
    "resnet": lambda: ResNet(widths=(8, 16), blocks_per_stage=2, rngs=nnx.Rngs(3)),
}
SHAPES = {"vgg": (3, 32, 32, 3), "vgg_bn": (3, 32, 24, 3), "vgg_nodense": (3, 16, 16, 3),
          "resnet": (3, 20, 18, 3)}  # ResNet: odd sizes after stride 2 exercise the padding


@pytest.mark.parametrize("name", sorted(MODELS))
def test_twin_logits_float32(name):
    model = _randomize(MODELS[name](), seed=7)
    x = jax.random.uniform(jax.random.key(1), SHAPES[name], jnp.float32)
    ours = np.asarray(_forward(model, x))
    twin = to_torch(model)
    assert not twin.training
    with torch.no_grad():
        theirs = twin(to_torch_input(x)).numpy()
    scale = np.abs(ours).max()
    # float32 with different summation orders (XLA vs oneDNN convolutions): a few ulps of
    # the logit scale per layer; 1e-5 relative to the largest logit.
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_twin_logits_float64(name):
    jax.config.update("jax_enable_x64", True)
    try:
        model = _randomize(MODELS[name](), seed=11)
        state = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), nnx.state(model))
        nnx.update(model, state)
        x = jax.random.uniform(jax.random.key(2), SHAPES[name], jnp.float64)
        ours = np.asarray(_forward(model, x))
        assert ours.dtype == np.float64
        twin = to_torch(model).double()
        with torch.no_grad():
            theirs = twin(to_torch_input(x)).numpy()
        # float64: only summation order differs, ~1e-15 relative; 1e-10 leaves margin but
        # would catch any layout error (a wrong permutation changes logits at O(1)).
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-10 * max(np.abs(ours).max(), 1))
    finally:
        jax.config.update("jax_enable_x64", False)


def test_twin_from_linen_matches():
    """A Linen pair gives the same twin as its NNX original."""
    model = _randomize(MODELS["vgg_bn"](), seed=3)
    module, variables = vgg_to_linen(model)
    x = jax.random.uniform(jax.random.key(4), SHAPES["vgg_bn"])
    with torch.no_grad():
        a = to_torch(model)(to_torch_input(x)).numpy()
        b = to_torch((module, variables))(to_torch_input(x)).numpy()
    np.testing.assert_array_equal(a, b)
    rmodel = _randomize(MODELS["resnet"](), seed=5)
    rmod, rvars = resnet_to_linen(rmodel)
    xr = jax.random.uniform(jax.random.key(4), SHAPES["resnet"])
    with torch.no_grad():
        c = to_torch((rmod, rvars))(to_torch_input(xr)).numpy()
    np.testing.assert_allclose(c, np.asarray(_forward(rmodel, xr)), atol=1e-5 * np.abs(c).max())


def test_resnet_twin_uses_torchvision_basicblock():
    twin = to_torch(ResNet(widths=(8, 16), blocks_per_stage=2, rngs=nnx.Rngs(0)))
    blocks = [m for m in twin.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 4
    assert blocks[2].downsample is not None and blocks[0].downsample is None


def test_vgg_twin_layers_are_plain_modules():
    """Captum's LRP needs every leaf to be a supported layer type, ReLUs not shared."""
    twin = to_torch(MODELS["vgg_bn"]())
    leaves = [m for m in twin.modules() if len(list(m.children())) == 0]
    allowed = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d,
               torch.nn.Linear)
    assert all(isinstance(m, allowed) for m in leaves)
    relus = [m for m in leaves if isinstance(m, torch.nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus) == 4 + 2


def test_io_helpers_round_trip():
    x = np.random.default_rng(0).random((2, 5, 7, 3), dtype=np.float32)
    t = to_torch_input(x)
    assert tuple(t.shape) == (2, 3, 5, 7)
    np.testing.assert_array_equal(from_torch_map(t), x)
    np.testing.assert_array_equal(from_torch_map(t[:, 0]), x[..., 0])
    with pytest.raises(ExplanationError, match="x"):
        to_torch_input(x[0])
    with pytest.raises(ExplanationError, match="model"):
        to_torch(object())
