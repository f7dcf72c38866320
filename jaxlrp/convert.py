"""Convert PyTorch checkpoints to jaxlrp's Flax models.

Torch is imported lazily, only by :func:`load_torch_state_dict`; the converters accept
any mapping of names to arrays (torch tensors or numpy arrays).

EfficientNet-Lite0 keys follow the PyPI package ``efficientnet-lite-pytorch``
(``_conv_stem.weight``, ``_blocks.3._depthwise_conv.weight``, ``_fc.weight``...).
Example with a fine-tuned checkpoint of your own (``num_classes`` is read from
``_fc.weight``)::

    from jaxlrp.convert import load_torch_state_dict, efficientnet_lite0_from_torch
    from jaxlrp.models.efficientnet import from_flat_state
    model = from_flat_state(efficientnet_lite0_from_torch(load_torch_state_dict("ft.pth")))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlrp.errors import ExplanationError

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_UNIT = {"expand": ("_expand_conv", "_bn0"), "depthwise": ("_depthwise_conv", "_bn1"),
         "project": ("_project_conv", "_bn2")}
_IGNORED_SUFFIX = "num_batches_tracked"  # BatchNorm training counter, not a weight


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch checkpoint as ``{name: float32 numpy array}``.

    Uses ``torch.load(..., weights_only=True)``: only tensors and plain containers are
    unpickled, never arbitrary objects. A checkpoint that wraps its weights as
    ``{"state_dict": {...}}`` or ``{"model": {...}}`` is unwrapped.

    Raises:
      ExplanationError: missing file, unreadable or unsafe checkpoint, no tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ExplanationError(f"path: checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ExplanationError(
            f"path: {str(path)!r} is not a loadable weights-only PyTorch checkpoint "
            f"({type(e).__name__}: {first})"
        ) from e
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ExplanationError(
            f"path: {str(path)!r} does not hold a state_dict (a mapping of names to tensors); "
            f"got {type(obj).__name__}"
        )
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ExplanationError(
                f"path: entry {k!r} of {str(path)!r} is a {type(v).__name__}, expected a tensor"
            )
        out[str(k)] = _to_numpy(v)
    return out


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor; duck-typed so torch is not imported here
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _torch_key(flat_key: str) -> tuple[str, str]:
    """Map a flat jaxlrp key to (torch key, kind) with kind in {conv, bn, fc_kernel, fc_bias}."""
    parts = flat_key.split("/")
    if parts[0] == "classifier":
        return ("_fc.weight", "fc_kernel") if parts[1] == "kernel" else ("_fc.bias", "fc_bias")
    if parts[0] == "blocks":
        i, unit, layer, leaf = parts[1], parts[2], parts[3], parts[4]
        conv, bn = _UNIT[unit]
        prefix = f"_blocks.{i}."
    else:
        unit, layer, leaf = parts[0], parts[1], parts[2]
        conv, bn = {"stem": ("_conv_stem", "_bn0"), "head": ("_conv_head", "_bn1")}[unit]
        prefix = ""
    if layer == "conv":
        return f"{prefix}{conv}.weight", "conv"
    return f"{prefix}{bn}.{_BN[leaf]}", "bn"


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "conv":  # flax (kh, kw, in/groups, out) <- torch (out, in/groups, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "fc_kernel":  # flax (in, out) <- torch (out, in)
        return (shape[1], shape[0])
    return shape


def efficientnet_lite0_from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Convert an ``efficientnet-lite-pytorch`` Lite0 state_dict to jaxlrp's flat Flax state.

    Args:
      state_dict: ``{torch name: tensor or array}`` (e.g. from :func:`load_torch_state_dict`
        or ``torch_model.state_dict()``); ``num_classes`` is read from ``_fc.weight``.

    Returns:
      ``{"stem/conv/kernel": float32 array, ...}``, the layout of
      :func:`jaxlrp.models.efficientnet.flat_state`; load it with
      :func:`jaxlrp.models.efficientnet.from_flat_state`.

    Raises:
      ExplanationError: naming the first missing, unexpected or wrongly shaped key.
    """
    from jaxlrp.models.efficientnet import HEAD_CHANNELS, expected_shapes

    if not isinstance(state_dict, Mapping):
        raise ExplanationError(
            f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}"
        )
    sd = _strip_prefix(state_dict)
    if "_fc.weight" not in sd:
        raise ExplanationError("state_dict: missing key '_fc.weight'")
    fc_shape = tuple(np.shape(sd["_fc.weight"]))
    if len(fc_shape) != 2 or fc_shape[1] != HEAD_CHANNELS or fc_shape[0] < 1:
        raise ExplanationError(
            f"state_dict: key '_fc.weight' has shape {fc_shape}, expected "
            f"(num_classes, {HEAD_CHANNELS})"
        )
    expected = expected_shapes(fc_shape[0])
    plan = {flat: (*_torch_key(flat), shape) for flat, shape in expected.items()}
    wanted = {tk for tk, _, _ in plan.values()}
    missing = sorted(wanted - set(sd))
    if missing:
        raise ExplanationError(
            f"state_dict: missing key {missing[0]!r} ({len(missing)} missing in all)"
        )
    extra = sorted(k for k in set(sd) - wanted if not k.endswith(_IGNORED_SUFFIX))
    if extra:
        raise ExplanationError(
            f"state_dict: unexpected key {extra[0]!r} ({len(extra)} unexpected in all); "
            "expected an EfficientNet-Lite0 (no squeeze-excitation) state_dict"
        )
    out: dict[str, np.ndarray] = {}
    for flat, (tk, kind, shape) in plan.items():
        arr = _to_numpy(sd[tk])
        want = _torch_shape(shape, kind)
        if tuple(arr.shape) != want:
            raise ExplanationError(
                f"state_dict: key {tk!r} has shape {tuple(arr.shape)}, expected {want}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ExplanationError(
                f"state_dict: key {tk!r} has dtype {arr.dtype}, expected floating point"
            )
        arr = arr.astype(np.float32)
        if kind == "conv":
            arr = arr.transpose(2, 3, 1, 0)
        elif kind == "fc_kernel":
            arr = arr.T
        out[flat] = np.ascontiguousarray(arr)
    return out


def load_efficientnet_lite0_torch(path: str | Path):
    """Read an ``efficientnet-lite-pytorch`` Lite0 checkpoint file as an NNX model (eval mode)."""
    from jaxlrp.models.efficientnet import from_flat_state

    return from_flat_state(efficientnet_lite0_from_torch(load_torch_state_dict(path)))


__all__ = [
    "load_torch_state_dict",
    "efficientnet_lite0_from_torch",
    "load_efficientnet_lite0_torch",
]
