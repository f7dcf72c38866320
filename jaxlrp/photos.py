"""Real photos bundled with jaxlrp (no download), for demos, tests and notebooks.

Four public-domain / CC0 photos from scikit-image (see ``assets/photos/LICENSES.md``),
stored as JPEG with shorter side 256. Each comes with the top-1 ImageNet class that the
reference PyTorch EfficientNet-Lite0 gives it after :func:`jaxlrp.models.preprocess`,
so ``jaxlrp.models.efficientnet_lite0()`` should predict the same label.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from importlib import resources

import numpy as np

from jaxlrp.errors import ExplanationError


@dataclasses.dataclass(frozen=True)
class Photo:
    """One bundled photo: ``image`` is uint8 ``(H, W, 3)`` RGB; ``label`` an ImageNet index."""

    name: str
    image: np.ndarray
    label: int
    label_name: str


def _dir():
    return resources.files("jaxlrp") / "assets" / "photos"


@functools.lru_cache(maxsize=1)
def _labels() -> dict:
    return json.loads((_dir() / "labels.json").read_text(encoding="utf-8"))


def names() -> list[str]:
    """Names of the bundled photos, in their canonical order."""
    return list(_labels())


def load(names: str | Sequence[str] | None = None) -> list[Photo]:
    """Load bundled photos.

    Args:
      names: one name, a sequence of names, or ``None`` for all
        (``"chelsea"``, ``"coffee"``, ``"astronaut"``, ``"rocket"``).

    Returns:
      One :class:`Photo` per name, in the order asked.
    """
    from PIL import Image

    table = _labels()
    if names is None:
        wanted = list(table)
    elif isinstance(names, str):
        wanted = [names]
    else:
        wanted = list(names)
    for n in wanted:
        if not isinstance(n, str) or n not in table:
            raise ExplanationError(
                f"names: unknown photo {n!r}; expected one of {sorted(table)}"
            )
    photos = []
    for n in wanted:
        with (_dir() / f"{n}.jpg").open("rb") as fh:
            image = np.asarray(Image.open(fh).convert("RGB"), dtype=np.uint8)
        photos.append(Photo(n, image, int(table[n]["label"]), str(table[n]["label_name"])))
    return photos


__all__ = ["Photo", "load", "names"]
