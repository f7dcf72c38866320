"""Small pure image operations on maps ``(..., H, W)``: resize, normalise, blur.

All functions are pure JAX (jit/vmap/grad-compatible). Their conventions follow the
OpenCV/PyTorch functions that pytorch-grad-cam and the hybrid method build on:

* :func:`resize`: bilinear with half-pixel centres and clamped borders, no antialiasing
  (``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``); ``align_corners=True`` gives
  ``torch.nn.UpsamplingBilinear2d``.
* :func:`minmax_normalize` / :func:`max_normalize`: per-image, safe on constant/zero maps.
* :func:`gaussian_blur`: separable Gaussian with reflect-101 borders
  (``cv2.GaussianBlur(img, (k, k), sigma)``).

Shapes and interpolation weights are static, so the weight matrices are built once per
trace from Python ints (constants, not traced values).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp.errors import ExplanationError


def relu(maps: jax.Array) -> jax.Array:
    """Elementwise ``max(maps, 0)``."""
    return jnp.maximum(maps, 0)


def _linear_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights along one axis (float64 constants)."""
    out = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = (out + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(mat, (np.arange(n_out), i1), w1)
    return mat


def _size(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise ExplanationError(f"{name}: expected (height, width) ints, got {size!r}") from e
    if h <= 0 or w <= 0:
        raise ExplanationError(f"{name}: expected positive (height, width), got {(h, w)}")
    return h, w


def resize(maps: jax.Array, size: int | Sequence[int], *, align_corners: bool = False) -> jax.Array:
    """Bilinear resize of the last two axes.

    Args:
      maps: (..., h, w) array.
      size: output (H, W) (note: cv2.resize takes (W, H)).
      align_corners: False (default) samples at half-pixel centres with clamped borders and no
        antialiasing, like ``cv2.resize(m, (W, H))`` with INTER_LINEAR, both for up- and
        downsampling; True maps corner pixels onto corner pixels, like
        ``torch.nn.UpsamplingBilinear2d``.
    Returns:
      (..., H, W) array of the same dtype.
    """
    if maps.ndim < 2:
        raise ExplanationError(f"maps: expected at least 2 axes (..., h, w), got {maps.shape}")
    h_out, w_out = _size(size, "size")
    h_in, w_in = maps.shape[-2:]
    if (h_in, w_in) == (h_out, w_out):
        return maps
    dtype = maps.dtype
    rh = jnp.asarray(_linear_matrix(h_in, h_out, align_corners), dtype)
    rw = jnp.asarray(_linear_matrix(w_in, w_out, align_corners), dtype)
    prec = jax.lax.Precision.HIGHEST
    out = jnp.einsum("...hw,Hh->...Hw", maps, rh, precision=prec)
    return jnp.einsum("...Hw,Ww->...HW", out, rw, precision=prec)


def _reduce_axes(maps: jax.Array) -> tuple[int, ...]:
    if maps.ndim < 2:
        raise ExplanationError(f"maps: expected a batch (B, ...), got shape {maps.shape}")
    return tuple(range(1, maps.ndim))


def _tiny(dtype: jnp.dtype) -> float:
    """The smallest normal number of a float dtype (0 for other dtypes)."""
    return float(jnp.finfo(dtype).tiny) if jnp.issubdtype(dtype, jnp.floating) else 0.0


def minmax_normalize(maps: jax.Array) -> jax.Array:
    """Per-example ``(m - min) / (max - min)`` over all axes but the first.

    Args:
      maps: (B, ...) array.
    Returns:
      (B, ...) in [0, 1]; a constant example becomes all zeros (no NaN, zero gradient).
    """
    axes = _reduce_axes(maps)
    lo = jnp.min(maps, axis=axes, keepdims=True)
    hi = jnp.max(maps, axis=axes, keepdims=True)
    span = hi - lo
    ok = span > _tiny(span.dtype)  # a subnormal span would flush to 0 on CPU: 0/0
    safe = jnp.where(ok, span, jnp.ones_like(span))  # double-where: finite gradients
    return jnp.where(ok, (maps - lo) / safe, jnp.zeros_like(maps))


def max_normalize(maps: jax.Array) -> jax.Array:
    """Per-example ``m / max(m)`` over all axes but the first.

    Args:
      maps: (B, ...) array.
    Returns:
      (B, ...); an example whose max is not positive (e.g. an all-zero map) is returned
      unchanged (no NaN, no sign flip).
    """
    axes = _reduce_axes(maps)
    hi = jnp.max(maps, axis=axes, keepdims=True)
    ok = hi > _tiny(hi.dtype)  # subnormal maxima flush to 0 on CPU/GPU: treat as zero maps
    safe = jnp.where(ok, hi, jnp.ones_like(hi))
    return jnp.where(ok, maps / safe, maps)


def max_abs_normalize(maps: jax.Array) -> jax.Array:
    """Per-example ``m / max(|m|)`` over all axes but the first: signed maps in [-1, 1].

    Args:
      maps: (B, ...) array.
    Returns:
      (B, ...); an example whose max ``|m|`` is zero or subnormal (subnormals flush to 0
      on CPU/GPU: 0/0) is returned unchanged (no NaN).
    """
    axes = _reduce_axes(maps)
    scale = jnp.max(jnp.abs(maps), axis=axes, keepdims=True)
    ok = scale > _tiny(scale.dtype)
    return jnp.where(ok, maps / jnp.where(ok, scale, jnp.ones_like(scale)), maps)


# OpenCV's getGaussianKernel tables for sigma <= 0 and small odd sizes (OpenCV 5.0).
_CV_SMALL_KERNELS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    9: tuple(v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)),
}


def gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """1-D Gaussian weights as ``cv2.getGaussianKernel(ksize, sigma)`` (sigma > 0), float64.

    A ``sigma <= 0`` is derived from ``ksize`` as OpenCV does: its fixed binomial-like
    tables for ksize 1 to 9, otherwise sigma = ``0.3 * ((ksize - 1) * 0.5 - 1) + 0.8``.
    """
    if isinstance(ksize, bool) or not isinstance(ksize, (int, np.integer)) or ksize <= 0 \
            or ksize % 2 == 0:
        raise ExplanationError(f"ksize: expected a positive odd int, got {ksize!r}")
    sigma = float(sigma)
    if not np.isfinite(sigma):
        raise ExplanationError(f"sigma: expected a finite number, got {sigma}")
    if sigma <= 0:
        if ksize in _CV_SMALL_KERNELS:
            return np.asarray(_CV_SMALL_KERNELS[ksize], np.float64)
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _pair(v, name: str) -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ExplanationError(f"{name}: expected a value or a (height, width) pair, got {v!r}")
        return tuple(v)
    return (v, v)


def _blur_axis(maps: jax.Array, weights: np.ndarray, axis: int) -> jax.Array:
    k = len(weights)
    r = k // 2
    n = maps.shape[axis]
    if r == 0:
        return maps
    if n == 1:
        # OpenCV's reflect-101 of a single pixel repeats it; the weights sum to 1.
        return maps
    pad = [(0, 0)] * maps.ndim
    pad[axis] = (r, r)
    padded = jnp.pad(maps, pad, mode="reflect")  # numpy 'reflect' == OpenCV BORDER_REFLECT_101
    out = jnp.zeros_like(maps)
    for i, wi in enumerate(weights):
        out = out + jnp.asarray(wi, maps.dtype) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
    return out


def gaussian_blur(
    maps: jax.Array,
    ksize: int | tuple[int, int] = 5,
    sigma: float | tuple[float, float] = 4.0,
) -> jax.Array:
    """Separable Gaussian blur of the last two axes with reflect-101 borders.

    Matches ``cv2.GaussianBlur(m, (ksize, ksize), sigma)`` on each (H, W) map.

    Args:
      maps: (..., H, W) floating array.
      ksize: odd kernel size, or (kh, kw) (note: OpenCV's tuple is (kw, kh)).
      sigma: standard deviation, or (sigma_h, sigma_w); <= 0 derives it from the size.
    Returns:
      (..., H, W) array of the same dtype.
    """
    if maps.ndim < 2:
        raise ExplanationError(f"maps: expected at least 2 axes (..., H, W), got {maps.shape}")
    kh, kw = _pair(ksize, "ksize")
    sh, sw = _pair(sigma, "sigma")
    gh, gw = gaussian_kernel(kh, sh), gaussian_kernel(kw, sw)
    # Reflect padding wraps more than once when the kernel radius exceeds the size - 1;
    # numpy's 'reflect' repeats the reflection, as OpenCV does for border indices.
    out = _blur_axis(maps, gh, maps.ndim - 2)
    return _blur_axis(out, gw, maps.ndim - 1)
