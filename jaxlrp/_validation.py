"""Checks at the public boundary.

Static properties (rank, dtype, shape) are checked on the Python side, which is
safe under ``jax.jit``. Value properties (NaN, Inf, target range) are checked
eagerly when the values are concrete; when they are traced, the explainers
poison the affected examples with NaN instead (see :func:`poison`), so that a
bad value never yields a silently plausible map.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp.errors import ExplanationError

Target = Any  # int | "predicted" | array of shape (B,)


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values now (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_images(x: Any, name: str = "x", channels: int | None = None) -> jax.Array:
    """Validate a batch of images and return it as a float JAX array.

    Args:
      x: (B, H, W, C) floating array.
      name: argument name used in error messages.
      channels: expected C, if known.
    Returns:
      ``x`` as a jax array, unchanged in dtype when floating.
    """
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ExplanationError(
            f"{name}: expected an array of images (B, H, W, C), got {type(x).__name__}"
        )
    if x.ndim != 4:
        raise ExplanationError(
            f"{name}: expected a batch of images of rank 4 (B, H, W, C), got shape {tuple(x.shape)}"
            + (" (add a batch axis with x[None])" if x.ndim == 3 else "")
        )
    if x.shape[0] == 0:
        raise ExplanationError(f"{name}: the batch is empty (shape {tuple(x.shape)})")
    if channels is not None and x.shape[-1] != channels:
        raise ExplanationError(
            f"{name}: expected {channels} channels in the last axis (NHWC), "
            f"got shape {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ExplanationError(
            f"{name}: expected a floating dtype (float32, float16, bfloat16, float64), got "
            f"{x.dtype}; convert uint8 images with x.astype('float32') / 255 or the model's "
            "preprocessing"
        )
    if is_concrete(x):
        # compile-time eval: a concrete constant inside an outer jit stays concrete
        with jax.ensure_compile_time_eval():
            finite = np.asarray(jnp.isfinite(x).reshape(x.shape[0], -1).all(axis=1))
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            raise ExplanationError(
                f"{name}: contains NaN or Inf values in example(s) {bad[:10]}"
            )
    return jnp.asarray(x)


def finite_rows(x: jax.Array) -> jax.Array:
    """(B,) bool: whether each example of ``x`` is entirely finite."""
    return jnp.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)


def resolve_targets(target: Target, logits: jax.Array, name: str = "target") -> jax.Array:
    """Turn ``target`` into a (B,) int32 array of class indices.

    Args:
      target: an int, a (B,) integer array, or ``"predicted"`` (the argmax).
      logits: (B, K) model outputs.
    """
    b, k = logits.shape[0], logits.shape[-1]
    if isinstance(target, str):
        if target != "predicted":
            raise ExplanationError(
                f"{name}: expected an int, a (B,) array of ints or 'predicted', got {target!r}"
            )
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if isinstance(target, (bool, np.bool_)):
        raise ExplanationError(f"{name}: expected an int class index, got a bool")
    if isinstance(target, (int, np.integer)):
        t = int(target)
        if not 0 <= t < k:
            raise ExplanationError(f"{name}: class index {t} out of range [0, {k})")
        return jnp.full((b,), t, jnp.int32)
    if not hasattr(target, "shape"):
        try:
            target = np.asarray(target)
        except Exception as e:  # noqa: BLE001
            raise ExplanationError(f"{name}: cannot read {type(target).__name__} as targets") from e
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise ExplanationError(f"{name}: expected integer class indices, got dtype {target.dtype}")
    if target.ndim == 0:
        target = jnp.broadcast_to(target, (b,))
    if target.shape != (b,):
        raise ExplanationError(
            f"{name}: expected shape ({b},) (one class per example), got {tuple(target.shape)}"
        )
    if is_concrete(target):
        t = np.asarray(target)
        if (t < 0).any() or (t >= k).any():
            bad = t[(t < 0) | (t >= k)].tolist()
            raise ExplanationError(f"{name}: class indices {bad[:10]} out of range [0, {k})")
    return jnp.asarray(target, jnp.int32)


def static_targets(target: Target, batch: int, num_classes: int, name: str = "target"):
    """Validate ``target`` without the logits.

    Returns None for ``"predicted"`` (resolve later with the argmax of the logits),
    else a (B,) int32 array (range-checked when concrete).
    """
    if isinstance(target, str) and target == "predicted":
        return None
    dummy = jax.ShapeDtypeStruct((batch, num_classes), jnp.float32)
    return resolve_targets(target, dummy, name)


def valid_targets(target: jax.Array, num_classes: int) -> jax.Array:
    """(B,) bool: whether each target lies in [0, num_classes)."""
    return (target >= 0) & (target < num_classes)


def poison(maps: jax.Array, ok: jax.Array) -> jax.Array:
    """Set the maps of examples whose ``ok`` is False to NaN. maps: (B, ...); ok: (B,)."""
    ok = ok.reshape((-1,) + (1,) * (maps.ndim - 1))
    return jnp.where(ok, maps, jnp.nan)


def check_positive_int(value: Any, name: str, *, odd: bool = False) -> int:
    """Validate a positive (optionally odd) int parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ExplanationError(f"{name}: expected a positive int, got {value!r}")
    if value <= 0:
        raise ExplanationError(f"{name}: expected a positive int, got {value}")
    if odd and value % 2 == 0:
        raise ExplanationError(f"{name}: expected an odd int, got {value}")
    return int(value)


def check_range(value: Any, name: str, low: float, high: float) -> float:
    """Validate a float parameter in [low, high]."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ExplanationError(
            f"{name}: expected a number in [{low}, {high}], got {value!r}"
        ) from e
    if not (low <= v <= high):
        raise ExplanationError(f"{name}: expected a number in [{low}, {high}], got {v}")
    return v
