"""Shared pieces of the benchmarks: timing, machine facts, result files, models, peers.

Benchmarks are scripts, not tests. Each one times both sides in the same process
(so both see the same machine load), prints its ratios last and writes
``benchmarks/results/<name>.json`` (figures, device, versions, date, load) and ``.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

#: Where results go; ``JAXLRP_BENCH_RESULTS=/some/dir`` redirects them (test runs on a
#: noisy machine go to a scratch folder, not over the published figures).
RESULTS = Path(os.environ.get("JAXLRP_BENCH_RESULTS")
               or Path(__file__).resolve().parent / "results")

# ----------------------------------------------------------------------------- timing


def block(out: Any) -> Any:
    """Wait for JAX arrays, and for queued CUDA work of PyTorch when a GPU is in use."""
    out = jax.block_until_ready(out)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return out


def timeit(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> dict:
    """Time ``fn()``: the first call on its own (compile + run), then ``warmup`` untimed
    calls, then ``reps`` timed calls. Returns seconds: ``first``, ``median``, ``min``,
    ``runs``; ``compile`` is ``first - median`` (clipped at 0)."""
    t0 = time.perf_counter()
    block(fn())
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        block(fn())
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(fn())
        runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    return {"first": first, "compile": max(0.0, first - med), "median": med,
            "min": min(runs), "runs": runs}


# ----------------------------------------------------------------------------- machine facts


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """Device, versions, date and current load (1/5/15-min load averages)."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {k: _version(k) for k in (
            "jax", "jaxlib", "flax", "numpy", "torch", "torchvision", "captum", "quantus",
            "grad-cam", "opencv-python-headless", "opencv-python", "jaxlrp")},
        "python": platform.python_version(),
    }


def write_results(name: str, figures: dict, markdown: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; returns the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, default=_json_default) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A Markdown table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_md(info: dict) -> str:
    v = info["versions"]
    return (
        f"Measured {info['date_utc']} on {info['cpu_count']} x {info['cpu']} "
        f"({info['platform']}, {info['devices']} device(s)); load average at start "
        f"{info['loadavg']}, at end {info.get('loadavg_end')}. jax {v['jax']}, flax {v['flax']}, "
        f"torch {v['torch']}, captum {v['captum']}, grad-cam {v['grad-cam']}, "
        f"quantus {v['quantus']}."
    )


# ----------------------------------------------------------------------------- models


def small_model() -> tuple[nnx.Module, str]:
    """The shipped default model, or (if its checkpoint is not there yet) the same
    architecture with random weights. Returns (model, description)."""
    from jaxlrp.models.default import CONFIG, DEFAULT_PATH

    if DEFAULT_PATH.is_file():
        from jaxlrp.models import default_model

        return default_model(), "default_model() (shipped weights)"
    from jaxlrp.models.vgg import VGG

    return VGG(**CONFIG, rngs=nnx.Rngs(0)), "default architecture, random weights (no checkpoint)"


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


class ConvReLU(nnx.Module):
    """Conv 3x3 (padding 1) + ReLU, one submodule so its output is post-ReLU (a CAM layer)."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.conv(x))


class DenseReLU(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.dense(x))


class VGG16(nnx.Module):
    """torchvision's VGG16 (no BN) in NNX, NHWC: (B, 224, 224, 3) -> (B, 1000).

    ``features/12`` is the last conv block (torchvision ``features[29]``, the ReLU after
    the last conv). The 7x7 adaptive average pool of torchvision is the identity at 224.
    The first dense layer's rows are in (h, w, c) order (see :func:`vgg16_from_torch`).
    """

    def __init__(self, num_classes: int = 1000, *, rngs: nnx.Rngs):
        blocks, cin, self.pool_after = [], 3, []
        for v in VGG16_CFG:
            if v == "M":
                self.pool_after.append(len(blocks) - 1)
            else:
                blocks.append(ConvReLU(cin, v, rngs=rngs))
                cin = v
        self.pool_after = tuple(self.pool_after)
        self.features = nnx.List(blocks)
        self.classifier = nnx.List([DenseReLU(7 * 7 * 512, 4096, rngs=rngs),
                                    DenseReLU(4096, 4096, rngs=rngs)])
        self.head = nnx.Linear(4096, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.pool_after:
                x = nnx.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        for block in self.classifier:
            x = block(x)
        return self.head(x)


def vgg16_pair(seed: int = 0) -> tuple[Any, VGG16]:
    """(torchvision vgg16 with random weights, eval, ReLUs not in-place; its NNX port)."""
    import torch
    from torchvision.models import vgg16

    torch.manual_seed(seed)
    tv = vgg16(weights=None).eval()
    for m in tv.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # Captum's LRP hooks need out-of-place ReLUs
    return tv, vgg16_from_torch(tv)


def vgg16_from_torch(tv: Any) -> VGG16:
    """Copy torchvision VGG16 weights into :class:`VGG16` (NHWC; flatten order permuted)."""
    import torch

    model = VGG16(rngs=nnx.Rngs(0))
    convs = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in tv.classifier if isinstance(m, torch.nn.Linear)]

    def arr(t: Any) -> jax.Array:
        return jnp.asarray(t.detach().cpu().numpy())

    for block, conv in zip(model.features, convs, strict=True):
        block.conv.kernel[...] = arr(conv.weight).transpose(2, 3, 1, 0)
        block.conv.bias[...] = arr(conv.bias)
    w1 = linears[0].weight.detach().cpu().numpy()  # (4096, 512*7*7), columns (c, h, w)
    w1 = w1.reshape(4096, 512, 7, 7).transpose(0, 2, 3, 1).reshape(4096, -1)
    model.classifier[0].dense.kernel[...] = jnp.asarray(w1.T)
    model.classifier[0].dense.bias[...] = arr(linears[0].bias)
    model.classifier[1].dense.kernel[...] = arr(linears[1].weight).T
    model.classifier[1].dense.bias[...] = arr(linears[1].bias)
    model.head.kernel[...] = arr(linears[2].weight).T
    model.head.bias[...] = arr(linears[2].bias)
    return model


# ----------------------------------------------------------------------------- the peers


def peer_hybrid(tmodel: Any, xt: Any, targets: np.ndarray, cam_layer: Any) -> np.ndarray:
    """The peers' pipeline (public re-implementation of the paper), (B, H, W) numpy.

    pytorch-grad-cam GradCAMPlusPlus at ``cam_layer``; Captum LRP with Alpha1_Beta0_Rule
    on convs and EpsilonRule(epsilon=0) on Linear layers; signed channel mean; then
    :func:`peer_combine`.
    """
    cam = peer_gradcam_pp(tmodel, xt, targets, cam_layer)
    rel = peer_lrp(tmodel, xt, targets).mean(1).detach().numpy()
    return peer_combine(cam, rel)


def _max_normalise(m: np.ndarray) -> np.ndarray:
    """m / max(m), left unchanged when max(m) is not positive (no NaN, no sign flip)."""
    hi = m.max()
    return m / hi if hi > np.finfo(np.float32).tiny else m


def peer_combine(cam: np.ndarray, rel: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Steps 2-5 of the peers' pipeline in numpy + OpenCV, per image -> (B, H, W) in [0, 1].

    ``clip(cam - threshold, 0, 1)`` x (rel / max), / max; ``cv2.GaussianBlur((5, 5), 4)``,
    / max; final clip to [0, 1]. Each division is skipped for a map whose max is not
    positive, as jaxlrp's (an all-zero or all-negative relevance map, or a CAM below the
    threshold, gives a zero map instead of NaN or an inverted map), and the final clip
    keeps positive evidence only: the validated crosscheck pipeline
    (tests/crosscheck/test_hybrid_peers.py) with those guards.
    """
    import cv2

    out = np.empty(np.shape(cam), np.float32)
    for b in range(len(cam)):
        den = np.clip(cam[b] - threshold, 0, 1)
        prod = _max_normalise(den * _max_normalise(rel[b]))
        blur = cv2.GaussianBlur(prod.astype(np.float32), (5, 5), 4)
        out[b] = np.clip(_max_normalise(blur), 0, 1)
    return out


def peer_hybrid_on_device(tmodel: Any, xt: Any, targets: np.ndarray, cam_layer: Any) -> np.ndarray:
    """:func:`peer_hybrid` for a model and input on any torch device: on the CPU it is
    :func:`peer_hybrid`; elsewhere (CUDA) the same pipeline with the LRP relevance moved
    to the host before its NumPy post-processing."""
    if xt.device.type == "cpu":
        return peer_hybrid(tmodel, xt, targets, cam_layer)
    import cv2

    cam = peer_gradcam_pp(tmodel, xt, targets, cam_layer)
    rel = peer_lrp(tmodel, xt, targets).mean(1).detach().cpu().numpy()
    out = np.empty_like(cam)
    for b in range(len(targets)):
        prod = np.clip(cam[b] - 0.2, 0, 1) * (rel[b] / rel[b].max())
        prod = prod / prod.max()
        blur = cv2.GaussianBlur(prod.astype(np.float32), (5, 5), 4)
        out[b] = blur / blur.max()
    return out


_CAMS: dict = {}


def peer_gradcam_pp(tmodel: Any, xt: Any, targets: np.ndarray, cam_layer: Any) -> np.ndarray:
    """pytorch-grad-cam GradCAMPlusPlus maps (B, H, W) (the CAM object is built once)."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    key = (id(tmodel), id(cam_layer))
    if key not in _CAMS:
        _CAMS[key] = GradCAMPlusPlus(model=tmodel, target_layers=[cam_layer])
    return _CAMS[key](input_tensor=xt,
                      targets=[ClassifierOutputTarget(int(t)) for t in targets])


def peer_lrp(tmodel: Any, xt: Any, targets: np.ndarray) -> Any:
    """Captum LRP (Alpha1_Beta0 on Conv2d, Epsilon(0) on Linear): (B, C, H, W) tensor."""
    import torch
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    for layer in tmodel.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.rule = Alpha1_Beta0_Rule()
        elif isinstance(layer, torch.nn.Linear):
            layer.rule = EpsilonRule(epsilon=0.0)
    return LRP(tmodel).attribute(xt.clone().requires_grad_(),
                                 target=torch.as_tensor(targets, device=xt.device))


def torch_input_gradient(tmodel: Any, xt: Any, targets: np.ndarray) -> Any:
    """d(sum_b logit[b, t_b]) / dx as a tensor."""
    import torch

    x = xt.clone().requires_grad_()
    out = tmodel(x)
    idx = torch.as_tensor(targets, device=x.device)
    out[torch.arange(len(x), device=x.device), idx].sum().backward()
    return x.grad


def torch_forward(tmodel: Any, xt: Any) -> Any:
    import torch

    with torch.no_grad():
        return tmodel(xt)
