"""jaxlrp.cam against pytorch-grad-cam 1.5.7 and Captum on the same weights.

Two levels of comparison:

* raw maps at the layer resolution (``relu=False, normalize=False, upsample=False``)
  against pytorch-grad-cam's ``get_cam_image`` on the activations and gradients its
  hooks captured (before its ReLU / normalisation / resize): float32 on both sides,
  max |diff| <= 1e-5 * max |ref|;
* final maps (ReLU, min-max, cv2 bilinear resize, min-max) against the peer's ``__call__``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from flax import nnx
from pytorch_grad_cam import (
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from jaxlrp import cam
from jaxlrp.tracing import as_adapter

pytestmark = pytest.mark.crosscheck

torch.set_num_threads(1)

# Raw maps: float32 on both sides; conv/matmul summation order differs between XLA and
# torch, which moves activations and gradients by a few float32 ulps (~1e-7 relative)
# per layer. 1e-5 of the map's scale leaves a wide margin for that and nothing else.
RAW_RTOL = 1e-5
# Final maps are min-max normalised to [0, 1] (twice, around the resize). pytorch-grad-cam
# divides by (max + 1e-7) instead of max; with map spans of order 1e-2..1 that changes
# values by <= 1e-5, and the normalisation divides float32 noise (~1e-7 of the raw
# scale) by the span. 1e-4 absolute on [0, 1] maps bounds both with a 10x margin.
FINAL_ATOL = 1e-4


# ----------------------------------------------------------------------------- twin models


class JBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.conv(x))


class JNet(nnx.Module):
    """conv-relu, maxpool, conv-relu (the CAM layer 'b2'), flatten, dense."""

    def __init__(self, rngs: nnx.Rngs, classes: int = 5, size: int = 16):
        self.b1 = JBlock(3, 6, rngs)
        self.b2 = JBlock(6, 8, rngs)
        self.head = nnx.Linear((size // 2) ** 2 * 8, classes, rngs=rngs)

    def __call__(self, x):
        x = self.b1(x)
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = self.b2(x)
        return self.head(x.reshape(x.shape[0], -1))


class TNet(torch.nn.Module):
    def __init__(self, j: JNet):
        super().__init__()
        self.b1 = torch.nn.Sequential(_tconv(j.b1.conv), torch.nn.ReLU())
        self.pool = torch.nn.MaxPool2d(2)
        self.b2 = torch.nn.Sequential(_tconv(j.b2.conv), torch.nn.ReLU())
        self.head = torch.nn.Linear(*j.head.kernel.shape)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(j.head.kernel.value).T))
            self.head.bias.copy_(torch.from_numpy(np.asarray(j.head.bias.value)))

    def forward(self, x):
        x = self.b2(self.pool(self.b1(x)))
        return self.head(x.permute(0, 2, 3, 1).flatten(1))  # NHWC flatten order as Flax


def _tconv(c: nnx.Conv) -> torch.nn.Conv2d:
    k = np.asarray(c.kernel.value)  # (kh, kw, in, out)
    t = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], padding=k.shape[0] // 2)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
        t.bias.copy_(torch.from_numpy(np.asarray(c.bias.value)))
    return t.eval()


@pytest.fixture(scope="module")
def twins():
    j = JNet(nnx.Rngs(0))
    # non-zero biases so that they are exercised too
    for blk in (j.b1, j.b2):
        blk.conv.bias.value = 0.05 * jax.random.normal(jax.random.key(3), blk.conv.bias.shape)
    t = TNet(j).eval()
    x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 16, 16, 3)), np.float32)
    logits_j = np.asarray(j(jnp.asarray(x)))
    logits_t = t(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(logits_j, logits_t, rtol=1e-5, atol=1e-5)
    targets = np.array([0, 3, 1, 4])
    return j, t, x, targets


PEERS = {
    "gradcam": GradCAM,
    "gradcam_pp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "scorecam": ScoreCAM,
}


def _peer(method, tmodel, layer, x, targets):
    """(raw layer-resolution cam, final map) from pytorch-grad-cam."""
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tg = [ClassifierOutputTarget(int(c)) for c in targets]
    obj = PEERS[method](model=tmodel, target_layers=[layer])
    obj.batch_size = 7  # Score-CAM: several partial batches
    final = obj(input_tensor=xt, targets=tg)
    acts = obj.activations_and_grads.activations[0].numpy()
    grads = (
        obj.activations_and_grads.gradients[0].numpy()
        if obj.activations_and_grads.gradients else None
    )
    raw = obj.get_cam_image(xt, layer, tg, acts, grads, False)
    obj.activations_and_grads.release()
    return np.asarray(raw), np.asarray(final), acts, grads


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("method", sorted(PEERS))
def test_matches_pytorch_grad_cam(twins, method):
    j, t, x, targets = twins
    f = getattr(cam, method)
    raw_ref, final_ref, acts, grads = _peer(method, t, t.b2, x, targets)
    kwargs = {"chunk_size": 5} if method == "scorecam" else {}
    raw = np.asarray(
        f(j, x, targets, "b2", relu=False, normalize=False, upsample=False, **kwargs)
    )
    assert raw.shape == raw_ref.shape == (4, 8, 8)
    assert np.abs(raw_ref).max() > 0
    assert _rel(raw, raw_ref) <= RAW_RTOL, _rel(raw, raw_ref)
    final = np.asarray(f(j, x, targets, "b2", **kwargs))
    assert final.shape == final_ref.shape == (4, 16, 16)
    assert np.abs(final - final_ref).max() <= FINAL_ATOL, np.abs(final - final_ref).max()


def test_activations_and_gradients_match_torch_hooks(twins):
    j, t, x, targets = twins
    _, _, acts_ref, grads_ref = _peer("gradcam", t, t.b2, x, targets)
    ad = as_adapter(j)
    a, g, _ = cam.activations_and_gradients(ad, ad.params, jnp.asarray(x), targets, "b2")
    assert _rel(np.asarray(a).transpose(0, 3, 1, 2), acts_ref) <= RAW_RTOL
    assert _rel(np.asarray(g).transpose(0, 3, 1, 2), grads_ref) <= RAW_RTOL


def test_gradcam_matches_captum_layergradcam(twins):
    j, t, x, targets = twins
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    ref = LayerGradCam(t, t.b2).attribute(xt, target=torch.from_numpy(targets))
    ref = ref.detach().numpy()[:, 0]
    raw = np.asarray(cam.gradcam(j, x, targets, "b2", relu=False, normalize=False,
                                 upsample=False))
    assert _rel(raw, ref) <= RAW_RTOL, _rel(raw, ref)
    # Captum's relu_attributions=True is our relu=True without normalisation
    ref_relu = LayerGradCam(t, t.b2).attribute(
        xt, target=torch.from_numpy(targets), relu_attributions=True
    ).detach().numpy()[:, 0]
    ours = np.asarray(cam.gradcam(j, x, targets, "b2", normalize=False, upsample=False))
    assert _rel(ours, ref_relu) <= RAW_RTOL
