"""Datasets: the embedded shapes-on-clutter localisation set, TFDS loading, image files.

* :func:`embedded` -- procedurally generated 64x64 images of 8 shape classes with
  exact object masks (no download).
* :func:`load` -- ``"embedded"`` or ``"tfds:NAME"`` into the same :class:`Dataset`.
* :func:`read_image` -- an image file as a uint8 (H, W, 3) array.
"""

from jaxlrp.data.dataset import Dataset
from jaxlrp.data.images import read_image
from jaxlrp.data.loaders import load
from jaxlrp.data.synthetic import CLASS_NAMES, SPLIT_SIZES, draw_shapes, embedded

__all__ = [
    "CLASS_NAMES",
    "SPLIT_SIZES",
    "Dataset",
    "draw_shapes",
    "embedded",
    "load",
    "read_image",
]
