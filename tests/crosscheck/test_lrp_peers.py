"""jaxlrp's LRP against Zennit and Captum on the same weights.

Tolerances (about 10x the largest measured difference, printed by the tests with -s):
* Zennit, float64: max|diff| / max|R| <= ZENNIT_RTOL = 2e-14 per example. Measured
  5.7e-16 to 1.7e-15 (a few float64 ulps, 2.2e-16 each, from summation order) over both
  models and the three composites, after neutralising Zennit's inexact BatchNorm merge
  (see :func:`exact_merge`). Without that step the difference is 2e-6 to 1.5e-4, all
  from Zennit's leftover ``1/sqrt(1 + eps)``.
* Captum, float32 (Captum's LRP hooks are float32-only in practice): max|diff| / max|R|
  <= CAPTUM_RTOL = 3e-6. Measured 9.9e-8 to 3.3e-7 (one to three float32 ulps of the
  chained layers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from jaxlrp._lrp import composites, lrp
from jaxlrp._tracing import as_adapter
from jaxlrp.models import VGG, ResNet
from jaxlrp.twins import from_torch_map, to_torch, to_torch_input

pytestmark = pytest.mark.crosscheck

ZENNIT_RTOL = 2e-14
CAPTUM_RTOL = 3e-6


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def to64(model):
    graphdef, state = nnx.split(model)
    state = jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state
    )
    return nnx.merge(graphdef, state)


def randomize_bn(model, seed=0):
    key = jax.random.key(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            key, *ks = jax.random.split(key, 5)
            n = node.mean.value.shape
            node.mean.value = 0.2 * jax.random.normal(ks[0], n)
            node.var.value = jax.random.uniform(ks[1], n, minval=0.5, maxval=2.0)
            node.scale.value = jax.random.uniform(ks[2], n, minval=0.5, maxval=1.5)
            node.bias.value = 0.2 * jax.random.normal(ks[3], n)
    return model


def exact_merge(twin):
    """Move BatchNorm's eps into its running variance (the forward pass is unchanged).

    Zennit's MergeBatchNorm leaves each BatchNorm as ``x / sqrt(1 + eps)`` after folding,
    so its canonized model differs from the original by that factor per BatchNorm
    (about 5e-6 each). jaxlrp folds exactly. With ``eps = 0`` and ``var + eps`` both
    fold to the same exact model, and the comparison isolates the LRP rules.
    """
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var += m.eps
                m.eps = 0.0
    return twin


def zennit_relevance(twin, x, target, composite, num_classes):
    xt = to_torch_input(np.asarray(x), torch.float64).requires_grad_()
    onehot = torch.eye(num_classes, dtype=torch.float64)[torch.as_tensor(target)]
    with Gradient(model=twin, composite=composite) as attributor:
        _, rel = attributor(xt, onehot)
    return from_torch_map(rel)


def models():
    vgg = randomize_bn(VGG(num_classes=6, widths=(8, 12, 16), batch_norm=True, dense=(24,),
                           input_size=32, rngs=nnx.Rngs(0)))
    resnet = randomize_bn(ResNet(num_classes=6, widths=(8, 16), blocks_per_stage=1,
                                 rngs=nnx.Rngs(1)), seed=1)
    return {"vgg_bn": (vgg, SequentialMergeBatchNorm), "resnet": (resnet, ResNetCanonizer)}


COMPOSITES = {
    "epsilon_plus_flat": (lambda canon: EpsilonPlusFlat(canonizers=[canon()]),
                          lambda: composites.epsilon_plus_flat()),
    "epsilon_gamma_box": (lambda canon: EpsilonGammaBox(
                              low=torch.zeros(2, 3, 32, 32, dtype=torch.float64),
                              high=torch.ones(2, 3, 32, 32, dtype=torch.float64),
                              canonizers=[canon()]),
                          lambda: composites.epsilon_gamma_box(0.0, 1.0)),
    "epsilon_alpha2_beta1": (lambda canon: EpsilonAlpha2Beta1(canonizers=[canon()]),
                             lambda: composites.epsilon_alpha2_beta1()),
}

MODELS = models()


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_matches_zennit_float64(arch, name):
    model, canon = MODELS[arch]
    model = to64(model)
    twin = exact_merge(to_torch(model).double())
    x = jax.random.uniform(jax.random.key(7), (2, 32, 32, 3), jnp.float64)
    target = np.array([1, 4])
    z_comp, j_comp = COMPOSITES[name]
    want = zennit_relevance(twin, x, target, z_comp(canon), 6)
    got = np.asarray(lrp(model, x, jnp.asarray(target), j_comp(), init="one_hot"))
    for b in range(2):
        scale = np.abs(want[b]).max()
        err = np.abs(got[b] - want[b]).max() / scale
        print(f"zennit {arch} {name} example {b}: max|diff|/max|R| = {err:.2e}")
        assert err <= ZENNIT_RTOL, f"{arch} {name} example {b}: max|diff|/max|R| = {err:.2e}"


def test_matches_captum_paper_composite_both_conventions():
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    jax.config.update("jax_enable_x64", False)
    model = VGG(num_classes=6, widths=(8, 12, 16), batch_norm=False, dense=(24,),
                input_size=32, rngs=nnx.Rngs(2))
    twin = to_torch(model)
    for layer in twin.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.rule = Alpha1_Beta0_Rule()
        elif isinstance(layer, torch.nn.Linear):
            layer.rule = EpsilonRule(epsilon=0.0)
    x = jax.random.uniform(jax.random.key(3), (3, 32, 32, 3), jnp.float32)
    target = np.array([0, 3, 5])
    xt = to_torch_input(np.asarray(x)).requires_grad_()
    want = from_torch_map(LRP(twin).attribute(xt, target=torch.as_tensor(target)))
    got = np.asarray(lrp(model, x, jnp.asarray(target), composites.paper()))
    logits = np.asarray(as_adapter(model).forward(x))
    got_one_hot = np.asarray(lrp(model, x, jnp.asarray(target), composites.paper(),
                                 init="one_hot"))
    for b in range(3):
        scale = np.abs(want[b]).max()
        err = np.abs(got[b] - want[b]).max() / scale
        assert err <= CAPTUM_RTOL, f"captum example {b}: {err:.2e}"
        # Zennit's convention starts from 1 instead of the logit: same map / logit.
        err1 = np.abs(got_one_hot[b] * logits[b, target[b]] - want[b]).max() / scale
        print(f"captum example {b}: max|diff|/max|R| = {err:.2e}, one-hot {err1:.2e}")
        assert err1 <= CAPTUM_RTOL, f"one-hot convention example {b}: {err1:.2e}"
