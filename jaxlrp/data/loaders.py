"""``load``: one entry point for the embedded dataset and TensorFlow Datasets (TFDS).

TFDS datasets are read with ``tensorflow_datasets.data_source(..., download=False)``
(random access over ArrayRecord files, no TensorFlow needed). Nothing is ever
downloaded: a dataset must already be prepared in the TFDS data directory.

Segmentation masks: when the dataset has a ``segmentation_mask`` feature, the object
mask is ``mask_value not in background``, where ``background`` is, per dataset:

* ``oxford_iiit_pet``: the trimap values are 1 = pet, 2 = background, 3 = border
  (the uncertain outline of the pet); background = {2}, so the mask is pet + border.
* any other dataset: background = {0} (the usual "0 is background" convention).

Pass ``background=`` to override, or ``mask_key=None`` to skip masks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlrp.data.dataset import Dataset
from jaxlrp.data.images import parse_size, resize_float, resize_uint8
from jaxlrp.data.synthetic import _check_n, embedded
from jaxlrp.errors import ExplanationError

_BACKGROUND: dict[str, tuple[int, ...]] = {"oxford_iiit_pet": (2,)}
_DEFAULT_BACKGROUND = (0,)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601
_VALID_FORMS = "'embedded' or 'tfds:NAME' (e.g. 'tfds:oxford_iiit_pet', 'tfds:mnist')"


def load(
    name: str,
    split: str = "test",
    n: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    channels: int | None = 3,
    image_key: str = "image",
    label_key: str = "label",
    mask_key: str | None = "auto",
    background: Sequence[int] | None = None,
) -> Dataset:
    """Load a dataset by name into a :class:`Dataset`.

    Args:
      name: ``"embedded"`` (the procedural shapes set, see
        :func:`jaxlrp.data.embedded`) or ``"tfds:NAME"`` for a prepared TFDS dataset
        (``NAME`` may carry a config and version, ``"tfds:NAME/CONFIG:1.0.0"``).
      split: ``"train"``/``"test"`` for embedded; any TFDS split string for TFDS
        (``"test"``, ``"train[:10%]"``...).
      n: keep the first ``min(n, len(split))`` examples (default all).
      image_size: ``None`` keeps the stored size (TFDS images must then all share
        one size), an int ``s`` gives ``(s, s)``, or ``(height, width)``. Images are
        resized bilinearly with antialiasing, masks with nearest neighbour.
      seed: seed of the embedded dataset (ignored for TFDS).
      data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      channels: 3 turns grayscale into RGB (repeated) and drops an alpha channel; 1
        turns RGB into grayscale (ITU-R 601 luma); ``None`` keeps the stored channels.
      image_key, label_key: TFDS feature names of the image and the class label.
      mask_key: TFDS feature of the segmentation mask; ``"auto"`` uses
        ``"segmentation_mask"`` when the dataset has one, ``None`` skips masks.
      background: mask values that are *not* the object (default per dataset, see
        the module docstring).
    Returns:
      Dataset with images (N, H, W, C) float32 in [0, 1], labels (N,) int32, masks
      (N, H, W) bool or None, and the class names from the label feature.
    """
    if not isinstance(name, str):
        raise ExplanationError(f"name: expected {_VALID_FORMS}, got {type(name).__name__}")
    size = parse_size(image_size)
    n = _check_n(n)
    if channels not in (None, 1, 3):
        raise ExplanationError(f"channels: expected None, 1 or 3, got {channels!r}")
    if name == "embedded":
        ds = embedded(split, n, seed)
        return _convert(ds, size, channels)
    if name.startswith("tfds:") and len(name) > len("tfds:"):
        return _load_tfds(
            name[len("tfds:") :],
            split,
            n,
            size,
            data_dir=data_dir,
            channels=channels,
            image_key=image_key,
            label_key=label_key,
            mask_key=mask_key,
            background=background,
        )
    raise ExplanationError(f"name: expected {_VALID_FORMS}, got {name!r}")


def _convert(ds: Dataset, size: tuple[int, int] | None, channels: int | None) -> Dataset:
    """Resize and change the channels of an in-memory float Dataset (embedded)."""
    if size is None and channels in (None, ds.images.shape[-1]):
        return ds
    images = ds.images
    if channels == 1 and images.shape[-1] != 1:
        images = images[..., :3] @ _LUMA
        images = images[..., None]
    elif channels == 3 and images.shape[-1] != 3:
        images = np.repeat(images[..., :1], 3, axis=-1)
    masks = ds.masks
    if size is not None:
        images = np.stack([resize_float(im, size) for im in images])
        if masks is not None:
            masks = np.stack(
                [resize_uint8(m.astype(np.uint8), size, nearest=True) for m in masks]
            ).astype(bool)
    return Dataset(
        images=np.clip(images, 0, 1).astype(np.float32),
        labels=ds.labels,
        masks=masks,
        class_names=ds.class_names,
        meta=ds.meta if size is None else {},  # pixel positions no longer apply
    )


def _channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W, channels)."""
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[-1]
    if channels is None or c == channels:
        return img
    if channels == 3:
        if c in (1, 2):  # L or LA
            return np.repeat(img[..., :1], 3, axis=-1)
        return img[..., :3]  # RGBA
    rgb = _channels(img, 3).astype(np.float32)
    luma = rgb @ _LUMA
    return np.round(luma).astype(np.uint8)[..., None]


def _tfds_error(name: str, split: str, data_dir: Any, err: Exception) -> ExplanationError:
    """A readable error for a TFDS dataset that could not be opened."""
    import tensorflow_datasets as tfds

    if isinstance(err, tfds.core.registered.DatasetNotFoundError):
        return ExplanationError(
            f"name: TFDS has no dataset {name!r} (tfds.list_builders() lists the "
            f"registered names); expected {_VALID_FORMS}"
        )
    where = os.fspath(data_dir) if data_dir is not None else os.environ.get(
        "TFDS_DATA_DIR", "~/tensorflow_datasets"
    )
    text = f"{type(err).__name__}: {err}"
    if "split" in str(err).lower() and "not been generated" not in str(err):
        return ExplanationError(
            f"split: TFDS dataset {name!r} has no split {split!r} in {where} ({text})"
        )
    return ExplanationError(
        f"name: TFDS dataset {name!r} (split {split!r}) is not prepared in {where}, and "
        "jaxlrp never downloads. On a machine with network run "
        f"`tfds build {name} --data_dir DIR` (or "
        f"`tfds.builder({name!r}, data_dir=DIR).download_and_prepare()`), copy DIR "
        "here and set TFDS_DATA_DIR=DIR or pass data_dir=DIR. "
        f"TFDS said: {text}"
    )


def _load_tfds(
    name: str,
    split: str,
    n: int | None,
    size: tuple[int, int] | None,
    *,
    data_dir: Any,
    channels: int | None,
    image_key: str,
    label_key: str,
    mask_key: str | None,
    background: Sequence[int] | None,
) -> Dataset:
    if not isinstance(split, str):
        raise ExplanationError(f"split: expected a TFDS split string, got {split!r}")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise ExplanationError(
            "name: 'tfds:' datasets need tensorflow-datasets (pip install tensorflow-datasets)"
        ) from e
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except ExplanationError:
        raise
    except Exception as e:  # noqa: BLE001 - every TFDS failure becomes one clear error
        raise _tfds_error(name, split, data_dir, e) from e

    features = source.dataset_info.features
    keys = list(features.keys())
    for key, arg in ((image_key, "image_key"), (label_key, "label_key")):
        if key not in features:
            raise ExplanationError(
                f"{arg}: TFDS dataset {name!r} has no feature {key!r}; it has {keys}"
            )
    if mask_key == "auto":
        mask_key = "segmentation_mask" if "segmentation_mask" in features else None
    elif mask_key is not None and mask_key not in features:
        raise ExplanationError(
            f"mask_key: TFDS dataset {name!r} has no feature {mask_key!r}; it has {keys}"
        )
    base_name = name.split("/")[0].split(":")[0]
    bg = np.asarray(
        background if background is not None else _BACKGROUND.get(base_name, _DEFAULT_BACKGROUND)
    )
    label_feature = features[label_key]
    names = getattr(label_feature, "names", None)

    count = len(source) if n is None else min(n, len(source))
    if count == 0:
        raise ExplanationError(f"split: TFDS dataset {name!r} split {split!r} is empty")
    images, labels, masks = [], [], []
    for i in range(count):
        ex = source[i]
        img = _channels(np.asarray(ex[image_key], np.uint8), channels)
        target = size if size is not None else img.shape[:2]
        images.append(resize_uint8(img, target))
        labels.append(int(ex[label_key]))
        if mask_key is not None:
            m = np.asarray(ex[mask_key])
            m = m[..., 0] if m.ndim == 3 else m
            m = resize_uint8(m.astype(np.uint8), target, nearest=True)
            masks.append(~np.isin(m, bg))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ExplanationError(
            f"image_size: the images of TFDS dataset {name!r} have different sizes "
            f"({sorted(shapes)[:4]}...); pass image_size=(height, width) to resize them"
        )
    if names is None:
        names = [str(k) for k in range(max(labels) + 1)]
    return Dataset(
        images=np.stack(images).astype(np.float32) / 255,
        labels=np.asarray(labels, np.int32),
        masks=np.stack(masks) if mask_key is not None else None,
        class_names=tuple(names),
    )
