"""The command line's one ``load_model``: ``--model`` -> :class:`LoadedModel`.

Every command that takes ``--model`` (``explain``, ``evaluate``) and ``demo`` load models
here: a shipped model by name (:mod:`jaxlrp.models.registry`, which also gives its
default LRP composite) or a jaxlrp checkpoint path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxlrp.cli.common import MODEL_NAMES
from jaxlrp.errors import ExplanationError
from jaxlrp.models.registry import CHECKPOINT_COMPOSITE, entry, is_shipped


@dataclasses.dataclass
class LoadedModel:
    """A model with what the CLI needs around it.

    ``prepare(uint8 (H, W, 3)) -> (h, w, c)`` float32 model input; ``display(input) ->
    (h, w, 3)`` float in [0, 1], the image the model saw; ``composite``: the LRP composite
    preset used when none is given (the shipped model's registry entry, or
    :data:`jaxlrp.models.registry.CHECKPOINT_COMPOSITE`).
    """

    name: str
    model: Any
    class_names: list[str]
    prepare: Callable[[Any], Any]
    display: Callable[[Any], Any]
    composite: str = CHECKPOINT_COMPOSITE


def _square_resize(image: Any, size: tuple[int, int], channels: int) -> Any:
    """Centre-crop uint8 (H, W, 3) to a square, resize to ``size``; float32 in [0, 1]."""
    import numpy as np

    from jaxlrp.data.images import resize_uint8

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(image[top:top + side, left:left + side, :3])
    out = resize_uint8(crop, size).astype(np.float32) / 255.0
    if channels == 1:
        out = out.mean(axis=-1, keepdims=True)
    elif channels != 3:
        raise ExplanationError(f"--model: models with {channels} input channels are not "
                               "supported by the command line; expected 1 or 3")
    return out


def _vgg_like(name: str, model: Any, header: dict | None) -> LoadedModel:
    import numpy as np

    from jaxlrp.data import CLASS_NAMES

    config = model.config() if hasattr(model, "config") else {}
    size = config.get("input_size", 64)
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = int(config.get("in_channels", 3))
    k = int(config.get("num_classes", len(CLASS_NAMES)))
    meta = (header or {}).get("metadata", {}) or {}
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) == k):
        embedded = header is None or meta.get("dataset") == "embedded"
        names = list(CLASS_NAMES) if embedded and k == len(CLASS_NAMES) else [
            f"class {i}" for i in range(k)]

    def display(x):
        x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    return LoadedModel(name, model, [str(n) for n in names],
                       lambda img: _square_resize(img, size, channels), display)


def load_model(spec: str) -> LoadedModel:
    """``--model`` -> :class:`LoadedModel`: a shipped model's name or a checkpoint path."""
    import numpy as np

    shipped = entry(spec) if is_shipped(spec) else None
    if shipped is not None and shipped.name == "efficientnet-lite0":
        from jaxlrp.models import efficientnet as eff

        def prepare(img):
            return np.asarray(eff.preprocess(img))[0]

        def display(x):
            x = np.asarray(x, np.float32) * np.asarray(eff.STD, np.float32)
            return np.clip(x + np.asarray(eff.MEAN, np.float32), 0.0, 1.0)

        return LoadedModel(shipped.name, shipped.load(), eff.imagenet_classes(), prepare,
                           display, shipped.composite)
    if shipped is not None:
        lm = _vgg_like(shipped.name, shipped.load(), None)
        return dataclasses.replace(lm, composite=shipped.composite)
    path = Path(spec)
    if not path.is_file():
        raise ExplanationError(
            f"--model: expected {' or '.join(repr(n) for n in MODEL_NAMES)} or a checkpoint "
            f"file, got {spec!r}" + (" (a folder)" if path.is_dir() else " (no such file)")
        )
    from jaxlrp import checkpoint

    header = checkpoint.read_header(path)
    model = checkpoint.load(path)
    return _vgg_like(path.name, model, header)


__all__ = ["LoadedModel", "load_model"]
