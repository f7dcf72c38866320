"""The in-memory ``Dataset`` container shared by every loader."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxlrp._validation import check_positive_int
from jaxlrp.errors import ExplanationError

Batch = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images with labels and, when available, ground-truth object masks.

    Attributes:
      images: (N, H, W, C) float32 in [0, 1].
      labels: (N,) int32 class indices into ``class_names``.
      masks: (N, H, W) bool object masks, or ``None`` for datasets without masks.
      class_names: one name per class.
      meta: optional per-example arrays (N, ...) describing how each example was made
        (the embedded set stores the object's centre, radius, angle and colour).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    class_names: tuple[str, ...]
    meta: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if not isinstance(imgs, np.ndarray) or imgs.ndim != 4:
            raise ExplanationError(
                f"images: expected a numpy array (N, H, W, C), got "
                f"{getattr(imgs, 'shape', type(imgs).__name__)}"
            )
        if not isinstance(labels, np.ndarray) or labels.shape != (imgs.shape[0],):
            raise ExplanationError(
                f"labels: expected shape ({imgs.shape[0]},), got "
                f"{getattr(labels, 'shape', type(labels).__name__)}"
            )
        if self.masks is not None and (
            not isinstance(self.masks, np.ndarray) or self.masks.shape != imgs.shape[:3]
        ):
            raise ExplanationError(
                f"masks: expected None or shape {imgs.shape[:3]}, got "
                f"{getattr(self.masks, 'shape', type(self.masks).__name__)}"
            )
        if not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        for key, value in self.meta.items():
            if np.shape(value)[:1] != (imgs.shape[0],):
                raise ExplanationError(
                    f"meta[{key!r}]: expected a leading axis of length {imgs.shape[0]}, "
                    f"got shape {np.shape(value)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Any) -> Dataset:
        """A new Dataset with the examples ``index`` (slice, int array or bool mask)."""
        sel = np.arange(len(self))[index]
        sel = np.atleast_1d(sel)
        return Dataset(
            images=self.images[sel],
            labels=self.labels[sel],
            masks=None if self.masks is None else self.masks[sel],
            class_names=self.class_names,
            meta={k: np.asarray(v)[sel] for k, v in self.meta.items()},
        )

    def take(self, n: int) -> Dataset:
        """The first ``min(n, len(self))`` examples."""
        n = check_positive_int(n, "n")
        return self.subset(slice(0, n))

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
    ) -> Iterator[Batch]:
        """Yield ``(images, labels, masks)`` numpy batches.

        Args:
          batch_size: examples per batch; the last batch is smaller unless
            ``drop_remainder``.
          shuffle: visit the examples in a random order drawn from ``seed``.
          seed: seed of the shuffle.
          drop_remainder: skip a final incomplete batch.
        Yields:
          images (b, H, W, C) float32, labels (b,) int32, masks (b, H, W) bool or None.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            if not shuffle:
                idx = slice(start, start + batch_size)
            yield (
                self.images[idx],
                self.labels[idx],
                None if self.masks is None else self.masks[idx],
            )

    def __repr__(self) -> str:
        masks = "None" if self.masks is None else f"{self.masks.shape}"
        return (
            f"Dataset(n={len(self)}, image_shape={self.image_shape}, "
            f"classes={len(self.class_names)}, masks={masks})"
        )
