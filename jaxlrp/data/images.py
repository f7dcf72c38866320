"""Reading image files into uint8 arrays, and resizing them (PIL)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxlrp.errors import ExplanationError

_MODES = ("RGB", "RGBA", "L", None)
# PIL modes returned as stored when ``mode=None`` (all 8 bits per channel).
_NATIVE = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def read_image(path: str | os.PathLike[str], mode: str | None = "RGB") -> np.ndarray:
    """Read an image file into a uint8 array.

    Args:
      path: file path.
      mode: ``"RGB"`` (default) converts grayscale, palette and RGBA images to RGB
        (alpha is dropped, not composited); ``"RGBA"`` or ``"L"`` convert likewise;
        ``None`` returns the channels as stored, for 8-bit L, LA, RGB and RGBA files.
    Returns:
      (H, W, C) uint8, with C = 3 for ``"RGB"``, 4 for ``"RGBA"``, 1 for ``"L"`` and
      1, 2, 3 or 4 (as stored) for ``None``.
    Raises:
      ExplanationError: unreadable path, not an image, truncated or corrupt file, or a
        stored format that ``mode=None`` cannot return as uint8.
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in _MODES:
        raise ExplanationError(f"mode: expected one of {_MODES}, got {mode!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise ExplanationError(f"path: expected a file path, got {type(path).__name__}")
    try:
        with Image.open(path) as im:
            im.load()  # decode fully now, so truncation is detected here
            if mode is None:
                if im.mode not in _NATIVE:
                    raise ExplanationError(
                        f"path: {os.fspath(path)!r} stores a {im.mode!r} image, which "
                        "cannot be returned as uint8 channels with mode=None; pass "
                        "mode='RGB' (or 'L') to convert it"
                    )
                arr = np.asarray(im, dtype=np.uint8)
            else:
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except ExplanationError:
        raise
    except FileNotFoundError as e:
        raise ExplanationError(f"path: no such file {os.fspath(path)!r}") from e
    except UnidentifiedImageError as e:
        raise ExplanationError(
            f"path: {os.fspath(path)!r} is not an image file PIL can read"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError for truncated data, SyntaxError/ValueError for corrupt
        # headers, IsADirectoryError/PermissionError for unreadable paths.
        raise ExplanationError(
            f"path: cannot read {os.fspath(path)!r} as an image ({type(e).__name__}: {e})"
        ) from e
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr


def parse_size(image_size: Any) -> tuple[int, int] | None:
    """``None``, an int ``s`` (-> ``(s, s)``) or an ``(h, w)`` pair of positive ints."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ExplanationError(
            f"image_size: expected None, an int or an (height, width) pair of ints, "
            f"got {image_size!r}"
        )
    if min(size) <= 0:
        raise ExplanationError(f"image_size: expected positive sizes, got {image_size!r}")
    return size


def resize_uint8(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize (H, W, C) or (H, W) uint8 to ``size`` = (h, w) with PIL.

    Bilinear with antialiasing for images; ``nearest=True`` for label maps and masks.
    """
    from PIL import Image

    if image.shape[:2] == size:
        return image
    resample = Image.NEAREST if nearest else Image.BILINEAR

    def one(plane: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(plane).resize((size[1], size[0]), resample=resample))

    if image.ndim == 2:
        return one(image)
    if image.shape[-1] in (3, 4):
        return one(image)
    return np.stack([one(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def resize_float(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) float to ``size`` = (h, w): PIL bilinear with antialiasing, in float32."""
    from PIL import Image

    if image.shape[:2] == size:
        return image
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
                (size[1], size[0]), resample=Image.BILINEAR
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, axis=-1)
