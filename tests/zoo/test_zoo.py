"""Third-party Flax vision models: every explainer, eagerly and under jax.jit.

Needs the ``zoo`` extra (``pip install -e .[zoo]``: flaxmodels 0.1.3, jax-resnet 0.0.4,
transformers<5); deselected by default, run with ``pytest -m zoo tests/zoo``. Every
model is randomly initialised (no download). The third-party packages are imported
inside the model builders, so collecting this file without the extra does not fail.

Each case asserts the required behaviour: a map of shape (B, H, W) with finite values,
the same eagerly and under ``jax.jit`` (with the model passed as a jit argument).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import jaxlrp
from jaxlrp import explainers

pytestmark = pytest.mark.zoo

SIZE = 32  # input side: small, but every model keeps a >= 1x1 last feature map
BATCH = 2
VGG_SIZE = 224  # flaxmodels' VGG16 with its classifier head only accepts 224x224
K = 10


class HFLogits(nn.Module):
    """A ``transformers`` Flax image classifier as a Linen module (B, H, W, C) -> (B, K).

    The README's documented wrapper: the inner module takes NHWC pixels (the public
    ``FlaxPreTrainedModel.__call__`` is what transposes NCHW), and returns an output
    dataclass whose ``.logits`` is picked here.
    """

    hf: nn.Module

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.hf(x, deterministic=True).logits


def hf_linen(hf_model: Any) -> Any:
    """``jaxlrp.linen(HFLogits(hf_model.module), variables)`` for a transformers Flax model."""
    p = hf_model.params
    collections = p if "batch_stats" in p else {"params": p}
    return jaxlrp.linen(HFLogits(hf_model.module), {k: {"hf": v} for k, v in collections.items()})


def _init(module: nn.Module, size: int = SIZE, **kwargs: Any) -> dict:
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.jit(functools.partial(module.init, **kwargs))(jax.random.key(0), x)


def flaxmodels_resnet18() -> Any:
    import flaxmodels

    module = flaxmodels.ResNet18(output="logits", pretrained=None, num_classes=K)
    return jaxlrp.linen(module, _init(module, train=False), train=False)


def flaxmodels_vgg16() -> Any:
    import flaxmodels

    module = flaxmodels.VGG16(output="logits", pretrained=None, num_classes=K)
    return jaxlrp.linen(module, _init(module, VGG_SIZE, train=False), train=False)


def jax_resnet_resnet18() -> Any:
    import jax_resnet

    module = jax_resnet.ResNet18(n_classes=K)
    return jaxlrp.linen(module, _init(module))


def jax_resnet_resnest() -> Any:
    import jax_resnet

    # ResNeSt-50-fast (split attention, radix 2), at a quarter of the width
    module = jax_resnet.ResNeSt50Fast(n_classes=K, hidden_sizes=(16, 32, 64, 128))
    return jaxlrp.linen(module, _init(module))


def transformers_resnet() -> Any:
    from transformers import FlaxResNetForImageClassification, ResNetConfig

    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64],
                          depths=[1, 1, 1], layer_type="basic", num_labels=K)
    return hf_linen(FlaxResNetForImageClassification(config, input_shape=(1, SIZE, SIZE, 3),
                                                     seed=0))


def transformers_vit() -> Any:
    from transformers import FlaxViTForImageClassification, ViTConfig

    config = ViTConfig(image_size=SIZE, patch_size=8, num_channels=3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       num_labels=K)
    return hf_linen(FlaxViTForImageClassification(config, input_shape=(1, SIZE, SIZE, 3),
                                                  seed=0))


BUILDERS = {
    "flaxmodels-resnet18": flaxmodels_resnet18,
    "flaxmodels-vgg16": flaxmodels_vgg16,
    "jax_resnet-resnet18": jax_resnet_resnet18,
    "jax_resnet-resnest50fast": jax_resnet_resnest,
    "transformers-resnet": transformers_resnet,
    "transformers-vit": transformers_vit,
}
# (batch, side) of the test input per model
INPUTS = {name: (BATCH, SIZE) for name in BUILDERS} | {"flaxmodels-vgg16": (1, VGG_SIZE)}


@functools.cache
def model(name: str) -> Any:
    return BUILDERS[name]()


def images(name: str) -> jax.Array:
    b, side = INPUTS[name]
    return jax.random.uniform(jax.random.key(1), (b, side, side, 3), jnp.float32)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_gives_logits(name: str) -> None:
    """The wrapped model is a (B, H, W, 3) -> (B, K) classifier (the precondition)."""
    m = model(name)
    logits = m(images(name))
    assert logits.shape == (INPUTS[name][0], K)
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("explainer", explainers.NAMES)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_explainer_eager_and_jit(name: str, explainer: str) -> None:
    m, x = model(name), images(name)
    b, side = INPUTS[name]
    fn = explainers.get(explainer)
    eager = np.asarray(fn(m, x, "predicted"))
    assert eager.shape == (b, side, side)
    assert np.all(np.isfinite(eager))
    jitted = np.asarray(jax.jit(lambda mm, xx: fn(mm, xx, "predicted"))(m, x))
    assert jitted.shape == (b, side, side)
    assert np.all(np.isfinite(jitted))
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5)
