"""Building blocks of the explanation experiments in ``notebooks/03`` and ``notebooks/04``.

* :func:`confound` / :func:`marker_mask`: a confounded copy of a dataset, with a small
  class-coloured marker patch in a corner (Ross et al. 2017 style "decoy" data);
* :func:`train_classifier`: :func:`jaxlrp.training.train` with an optional
  :func:`jaxlrp.penalty.explanation_penalty` term as its ``extra_loss`` ("right for the
  right reasons");
* :func:`mass_in_mask`: the share of a map's absolute mass inside a mask;
* :func:`manipulate`: a bounded input perturbation that keeps the output but moves an
  explanation towards a target map (Dombrowski et al. 2019), for softened models.

Notebooks call these so that they stay short; the test suite runs the notebooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlrp._validation import check_positive_int
from jaxlrp.data import Dataset
from jaxlrp.errors import ExplanationError
from jaxlrp.penalty import explanation_penalty
from jaxlrp.training import train

__all__ = [
    "MARKER_COLORS",
    "confound",
    "manipulate",
    "marker_mask",
    "mass_in_mask",
    "train_classifier",
]

# One saturated colour per class: the corners of the RGB cube.
MARKER_COLORS = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]],
    dtype=np.float32,
)


def marker_mask(image_size: int | tuple[int, int], size: int = 8, margin: int = 0) -> np.ndarray:
    """(H, W) bool mask of the marker square in the top-left corner, grown by ``margin``."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    mask = np.zeros((h, w), bool)
    mask[: size + margin, : size + margin] = True
    return mask


def confound(
    data: Dataset, mode: str = "class", *, size: int = 8, seed: int = 0
) -> Dataset:
    """A copy of ``data`` with a ``size`` x ``size`` marker in the top-left corner.

    Args:
      data: a dataset with images (N, H, W, 3) in [0, 1] and labels (N,).
      mode: ``"class"``: the marker colour is :data:`MARKER_COLORS` ``[label]`` (a
        perfect shortcut); ``"shuffled"``: the colour of a random *other* class (the
        shortcut points to a wrong class); ``"none"``: no marker (the data unchanged).
      size: side of the square in pixels; seed: for ``"shuffled"``.
    Returns:
      A :class:`jaxlrp.data.Dataset` with the same labels and object masks, and
      ``meta["marker_class"]`` (N,) (-1 for ``"none"``).
    """
    if mode not in ("class", "shuffled", "none"):
        raise ExplanationError(f"mode: expected 'class', 'shuffled' or 'none', got {mode!r}")
    size = check_positive_int(size, "size")
    images = np.array(data.images, dtype=np.float32, copy=True)
    labels = np.asarray(data.labels)
    k = len(MARKER_COLORS)
    if labels.size and int(labels.max()) >= k:
        raise ExplanationError(f"data: at most {k} classes are supported, got {labels.max() + 1}")
    if mode == "none":
        marker = np.full(labels.shape, -1, np.int32)
    else:
        marker = labels.astype(np.int32)
        if mode == "shuffled":
            shift = np.random.default_rng(seed).integers(1, data.num_classes, labels.shape)
            marker = ((labels + shift) % data.num_classes).astype(np.int32)
        images[:, :size, :size, :] = MARKER_COLORS[marker][:, None, None, :]
    meta = {**dict(data.meta), "marker_class": marker}
    return Dataset(images, labels.astype(np.int32), data.masks, data.class_names, meta)


def mass_in_mask(maps: Any, mask: Any) -> np.ndarray:
    """Share (B,) of each map's absolute mass inside ``mask`` ((H, W) or (B, H, W))."""
    m = np.abs(np.asarray(maps, np.float64))
    if m.ndim == 4:
        m = m.sum(-1)
    mask = np.broadcast_to(np.asarray(mask, bool), m.shape)
    total = m.sum(axis=(1, 2))
    return np.where(total > 0, (m * mask).sum(axis=(1, 2)) / np.maximum(total, 1e-30), 0.0)


def train_classifier(
    model: nnx.Module,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    explain: Callable | None = None,
    mask: Any = None,
    weight: float = 0.0,
    penalty_target: str = "label",
    progress: bool = False,
) -> tuple[nnx.Module, dict]:
    """Train an NNX classifier with cross-entropy + ``weight`` * explanation penalty.

    Args:
      model: an NNX classifier without BatchNorm (trained in place, returned in eval mode).
      data: images (N, H, W, C) and labels (N,).
      epochs, batch_size, lr, seed: AdamW with warm-up + cosine decay
        (:func:`jaxlrp.training.make_optimizer`), a fresh random order per epoch (the
        one loop, :func:`jaxlrp.training.train`).
      explain, mask, weight: when ``explain`` is given, add
        ``weight * explanation_penalty(explain, model, x, t, mask)`` (mask (H, W)).
      penalty_target: the class ``t`` explained in the penalty: ``"label"`` (the true
        class) or ``"random"`` (a uniformly drawn class per example and step, an unbiased
        estimate of the penalty summed over all classes: a shortcut can also act by
        *suppressing* the other classes' logits, which the true class's map misses).
      progress: show a progress bar.
    Returns:
      ``(model, history)`` with per-epoch ``loss``, ``penalty`` (mean over batches).
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    labels = np.asarray(data.labels)
    if len(labels) // batch_size == 0:
        raise ExplanationError(f"batch_size: {batch_size} exceeds the dataset ({len(labels)})")
    if explain is not None and mask is None:
        raise ExplanationError("mask: required when explain is given")
    if penalty_target not in ("label", "random"):
        raise ExplanationError(
            f"penalty_target: expected 'label' or 'random', got {penalty_target!r}"
        )
    num_classes = int(labels.max()) + 1
    extra = None
    if explain is not None:
        mask_arr = jnp.asarray(mask, jnp.float32)

        def extra(m: nnx.Module, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple:
            t = y if penalty_target == "label" else jax.random.randint(
                key, y.shape, 0, num_classes, jnp.int32)
            pen = explanation_penalty(explain, m, x, t, mask_arr)
            return weight * pen, {"penalty": pen}

    model, hist = train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        progress=progress, extra_loss=extra)
    return model, {"loss": hist["loss"], "penalty": hist.get("penalty", [0.0] * epochs)}


def manipulate(
    model: Any,
    x: Any,
    target_map: Any,
    explain: Callable,
    *,
    eps: float = 8 / 255,
    steps: int = 100,
    lr: float = 1e-3,
    output_weight: float = 1.0,
    target: Any = "predicted",
) -> tuple[jax.Array, dict]:
    """Find ``x + delta`` (``|delta|_inf <= eps``, in [0, 1]) whose map approaches ``target_map``.

    Minimises ``mse(explain(model, x + delta), target_map) + output_weight *
    mse(softmax(model(x + delta)), softmax(model(x)))`` with Adam (sign-free), projecting
    onto the L_inf ball and the image range after every step (Dombrowski et al. 2019).
    Use a softened model (:func:`jaxlrp.models.soften`) so that the map has a useful
    gradient w.r.t. the input.

    Args:
      model: the (softened) model; x: (B, H, W, C) images in [0, 1];
      target_map: (B, H, W) maps to move towards; explain: ``explain(model, x, t)``
        returning (B, H, W).
      eps: L_inf budget; steps, lr: Adam steps and step size.
      output_weight: weight of the output-preservation term.
      target: class explained; default the prediction on the clean ``x``.
    Returns:
      ``(x_adv, info)`` with the per-example ``target`` classes and the ``loss`` history.
    """
    steps = check_positive_int(steps, "steps")
    if not (eps > 0):
        raise ExplanationError(f"eps: expected a positive float, got {eps!r}")
    x = jnp.asarray(x)
    target_map = jnp.asarray(target_map, x.dtype)
    if target_map.shape != x.shape[:3]:
        raise ExplanationError(
            f"target_map: expected shape {tuple(x.shape[:3])}, got {tuple(target_map.shape)}"
        )
    p0 = jax.nn.softmax(model(x))
    t = jnp.argmax(p0, -1) if isinstance(target, str) and target == "predicted" else target
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    tx = optax.adam(lr)

    def loss_fn(delta):
        xa = x + delta
        expl = jnp.mean(jnp.square(explain(model, xa, t) - target_map))
        out = jnp.mean(jnp.square(jax.nn.softmax(model(xa)) - p0))
        return expl + output_weight * out * p0.shape[-1]

    @jax.jit
    def step(delta, state):
        loss, g = jax.value_and_grad(loss_fn)(delta)
        updates, state = tx.update(g, state, delta)
        delta = optax.apply_updates(delta, updates)
        delta = jnp.clip(delta, -eps, eps)
        delta = jnp.clip(x + delta, 0.0, 1.0) - x
        return delta, state, loss

    delta = jnp.zeros_like(x)
    state = tx.init(delta)
    losses = []
    for _ in range(steps):
        delta, state, loss = step(delta, state)
        losses.append(loss)
    return x + delta, {"target": t, "loss": [float(v) for v in losses]}
