"""Helpers shared by the metric families.

Conventions (mirroring Quantus 0.6.0 unless a docstring says otherwise):

* Images ``x`` are NHWC, (B, H, W, C). Attributions ``a`` are (B, H, W) or
  (B, H, W, C) with C equal to the image's channels (or 1). :func:`prepare_maps`
  turns both into (B, H, W, Ca), Ca in {1, C}.
* Normalisation ("normalise=True") divides each map by its maximum absolute
  value, as Quantus's ``normalise_by_max``; an all-zero map is left unchanged.
  Quantus divides by the maximum over the *whole batch* (its default
  ``normalise_axes`` covers the batch axis too), which makes one example's score
  depend on the others; jaxlrp normalises each example on its own (identical to
  Quantus called one example at a time). ``abs=True`` is applied after it.
* Where a score is mathematically undefined for a degenerate but valid map (a
  correlation with a constant vector, a ratio 0/0), the function documents the
  value it returns instead of NaN.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlrp._lrp import fast_forward
from jaxlrp._tracing import Adapter, LinenModel, as_adapter
from jaxlrp._validation import check_images, is_concrete
from jaxlrp.errors import ExplanationError

# ----------------------------------------------------------------------------- validation


def check_finite_maps(a: jax.Array, name: str = "a") -> None:
    """Raise when a concrete map batch contains NaN or Inf (examples listed)."""
    if is_concrete(a):
        with jax.ensure_compile_time_eval():  # a constant inside an outer jit stays concrete
            ok = np.asarray(jnp.isfinite(a).reshape(a.shape[0], -1).all(axis=1))
        if not ok.all():
            bad = np.flatnonzero(~ok).tolist()
            raise ExplanationError(
                f"{name}: contains NaN or Inf values in example(s) {bad[:10]}; expected finite "
                "attribution maps"
            )


def as_maps(a: Any, name: str = "a") -> jax.Array:
    """Validate an attribution batch (B, H, W) or (B, H, W, C); return it as (B, H, W, Ca)."""
    if isinstance(a, (list, tuple)):
        a = np.asarray(a)
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ExplanationError(
            f"{name}: expected an array of attribution maps (B, H, W) or (B, H, W, C), got "
            f"{type(a).__name__}"
        )
    if a.ndim not in (3, 4):
        raise ExplanationError(
            f"{name}: expected attribution maps of shape (B, H, W) or (B, H, W, C), got shape "
            f"{tuple(a.shape)}"
        )
    if a.shape[0] == 0:
        raise ExplanationError(f"{name}: the batch is empty (shape {tuple(a.shape)})")
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
        raise ExplanationError(f"{name}: expected a numeric dtype, got {a.dtype}")
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating) or jnp.finfo(a.dtype).bits < 32:
        # ints and half precision (bfloat16/float16) are scored in float32: constants such
        # as log(p + 1e-12) and subnormal maxima would otherwise give NaN
        a = a.astype(jnp.float32)
    check_finite_maps(a, name)
    return a if a.ndim == 4 else a[..., None]


def prepare_maps(a: Any, x: jax.Array, name: str = "a") -> jax.Array:
    """Validate maps against images x (B, H, W, C); return (B, H, W, Ca), Ca in {1, C}."""
    a4 = as_maps(a, name)
    b, h, w, c = x.shape
    if a4.shape[:3] != (b, h, w) or a4.shape[3] not in (1, c):
        raise ExplanationError(
            f"{name}: expected shape ({b}, {h}, {w}) or ({b}, {h}, {w}, {c}) to match the images "
            f"x of shape {tuple(x.shape)}, got {tuple(jnp.shape(a))}"
        )
    return a4


def prepare_masks(masks: Any, shape: tuple[int, int, int], name: str = "masks") -> jax.Array:
    """Validate ground-truth masks (B, H, W) or (B, H, W, 1); return (B, H*W) bool.

    Concrete masks that are empty for some example raise; traced ones are checked
    by the caller (the score of such an example is NaN, as in Quantus).
    """
    if masks is None:
        raise ExplanationError(f"{name}: this metric needs a ground-truth mask per image, got None")
    if isinstance(masks, (list, tuple)):
        masks = np.asarray(masks)
    if not hasattr(masks, "shape"):
        raise ExplanationError(f"{name}: expected a (B, H, W) array, got {type(masks).__name__}")
    m = jnp.asarray(masks)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if tuple(m.shape) != tuple(shape):
        raise ExplanationError(
            f"{name}: expected shape {tuple(shape)} (one (H, W) mask per map), got "
            f"{tuple(jnp.shape(masks))}"
        )
    m = m.astype(bool).reshape(shape[0], -1)
    if is_concrete(m):
        with jax.ensure_compile_time_eval():
            empty = np.flatnonzero(~np.asarray(m.any(axis=1)))
        if empty.size:
            raise ExplanationError(
                f"{name}: the mask of example(s) {empty[:10].tolist()} is empty; localisation "
                "needs at least one object pixel per image"
            )
    return m


def check_int(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """Validate an int parameter in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ExplanationError(f"{name}: expected an int, got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ExplanationError(f"{name}: expected an int {rng}, got {v}")
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """Validate a string option."""
    if not isinstance(value, str) or value not in choices:
        raise ExplanationError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Validate a ``jax.random`` key (typed or raw uint32[2])."""
    if key is None:
        raise ExplanationError(
            f"{name}: this metric is random; pass a key, e.g. key=jax.random.key(0)"
        )
    if not hasattr(key, "dtype"):
        raise ExplanationError(f"{name}: expected a jax.random key, got {type(key).__name__}")
    if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (
        key.dtype == jnp.uint32 and key.shape == (2,)
    )):
        raise ExplanationError(
            f"{name}: expected a jax.random key (jax.random.key(seed)), got dtype {key.dtype} "
            f"shape {tuple(key.shape)}"
        )
    return key


def check_labels(y: Any, b: int, num_classes: int | None = None, name: str = "y") -> jax.Array:
    """Validate (B,) integer labels (an int broadcasts)."""
    if isinstance(y, (bool, np.bool_)):
        raise ExplanationError(f"{name}: expected integer class indices, got a bool")
    if isinstance(y, (int, np.integer)):
        y = np.full((b,), int(y))
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    if not hasattr(y, "dtype") or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ExplanationError(
            f"{name}: expected a (B,) array of integer class indices, got "
            f"{getattr(y, 'dtype', type(y).__name__)}"
        )
    if tuple(y.shape) != (b,):
        raise ExplanationError(f"{name}: expected shape ({b},), got {tuple(y.shape)}")
    if num_classes is not None and is_concrete(y):
        yy = np.asarray(y)
        if (yy < 0).any() or (yy >= num_classes).any():
            raise ExplanationError(f"{name}: class indices out of range [0, {num_classes})")
    return jnp.asarray(y, jnp.int32)


# ----------------------------------------------------------------------------- map preprocessing


def normalise_by_max(a: jax.Array) -> jax.Array:
    """Divide each example (axis 0) by its max |a|; all-zero examples stay zero."""
    m = jnp.max(jnp.abs(a.reshape(a.shape[0], -1)), axis=1)
    m = jnp.where(m < jnp.finfo(m.dtype).tiny, 1.0, m).astype(a.dtype)  # zero or subnormal
    return a / m.reshape((-1,) + (1,) * (a.ndim - 1))


def preprocess(a: jax.Array, normalise: bool, abs: bool) -> jax.Array:  # noqa: A002
    """Quantus's order: normalise by max |a| first, then take |a|."""
    if normalise:
        a = normalise_by_max(a)
    if abs:
        a = jnp.abs(a)
    return a


def flat(a: jax.Array) -> jax.Array:
    """(B, ...) -> (B, N)."""
    return a.reshape(a.shape[0], -1)


def baseline_values(x: jax.Array, baseline: Any) -> jax.Array:
    """Per-example replacement value (B,) for ``perturb_baseline``.

    "black": the example's minimum over all pixels and channels (Quantus);
    "white": its maximum; "mean": its mean; a number: that value.
    """
    xf = flat(x)
    if isinstance(baseline, str):
        if baseline == "black":
            return xf.min(axis=1)
        if baseline == "white":
            return xf.max(axis=1)
        if baseline == "mean":
            return xf.mean(axis=1)
    elif isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(
        baseline, bool
    ):
        return jnp.full((x.shape[0],), float(baseline), x.dtype)
    raise ExplanationError(
        f"perturb_baseline: expected 'black', 'white', 'mean' or a number, got {baseline!r}"
    )


# ----------------------------------------------------------------------------- similarity


@functools.partial(jax.jit, static_argnames=("lead", "n", "k"))
def random_subsets(key: jax.Array, lead: tuple[int, ...], n: int, k: int) -> jax.Array:
    """Uniformly random k-subsets of range(n) without replacement -> (*lead, k) int32.

    Independent per leading index, each subset in random order. When ``n >= 8 k``
    the subset is the first k distinct values of m = 2k + 32 uniform draws: m random
    numbers per subset instead of n, and two one-operand sorts of m packed keys
    (XLA:CPU's sorts with a second operand, as ``argsort``, are several times
    slower). The first k distinct values of i.i.d. uniform draws are a uniformly
    random subset, since nothing in the draws favours one value over another. In the
    rare case that a row's draws hold fewer than k distinct values, every row is
    drawn again as the top k of n uniform keys (the method used when ``n < 8 k``).
    """
    k_dense, k_sparse = jax.random.split(key)

    def dense():
        return jax.lax.top_k(jax.random.uniform(k_dense, lead + (n,)), k)[1].astype(jnp.int32)

    m = 2 * k + 32
    if n < 8 * k or n * m >= 2**31:
        return dense()
    pos = jnp.arange(m, dtype=jnp.int32)
    cand = jax.random.randint(k_sparse, lead + (m,), 0, n, jnp.int32)
    srt = jnp.sort(cand * m + pos, axis=-1)  # by value, then by draw position
    value, first_pos = srt // m, srt % m
    repeat = jnp.concatenate([jnp.zeros(lead + (1,), bool), value[..., 1:] == value[..., :-1]],
                             axis=-1)
    # each distinct value at the position of its first draw; repeats sort last
    order = jnp.sort(jnp.where(repeat, m, first_pos), axis=-1)[..., :k]
    picked = jnp.take_along_axis(cand, jnp.minimum(order, m - 1), axis=-1)
    enough = jnp.all(order[..., -1] < m)
    return jax.lax.cond(enough, lambda: picked, dense)


def _safe_div(num: jax.Array, den: jax.Array, fill: float = 0.0) -> jax.Array:
    ok = jnp.abs(den) >= jnp.finfo(den.dtype).tiny  # subnormals flush to 0 on CPU: 0/0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), fill)


def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise Pearson correlation of (B, N) arrays -> (B,).

    0 where either row is constant (scipy returns NaN there).
    """
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    # Rescale first (as scipy does) so that tiny or huge values keep precision.
    a = _safe_div(a, jnp.max(jnp.abs(a), axis=-1, keepdims=True))
    b = _safe_div(b, jnp.max(jnp.abs(b), axis=-1, keepdims=True))
    num = (a * b).sum(-1)
    den = jnp.sqrt((a * a).sum(-1)) * jnp.sqrt((b * b).sum(-1))
    return jnp.clip(_safe_div(num, den), -1.0, 1.0)


def average_ranks(v: jax.Array) -> jax.Array:
    """Row-wise ranks (1-based) of (B, N), ties given their average rank (scipy 'average')."""
    s = jnp.sort(v, axis=-1)

    def one(srow, row):
        lo = jnp.searchsorted(srow, row, side="left")
        hi = jnp.searchsorted(srow, row, side="right")
        return (lo + hi + 1).astype(v.dtype) / 2

    return jax.vmap(one)(s, v)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise Spearman rank correlation (average ranks for ties) -> (B,); 0 for constant rows."""
    return pearson(average_ranks(a), average_ranks(b))


def _box_mean(z: jax.Array, win: int) -> jax.Array:
    """Mean over a win-sized window on the trailing 1 or 2 axes with symmetric ('reflect' in
    scipy.ndimage) borders, as ``scipy.ndimage.uniform_filter(size=win)``."""
    r = win // 2
    nsp = 2 if z.ndim == 3 else 1
    pad = [(0, 0)] * (z.ndim - nsp) + [(r, r)] * nsp
    zp = jnp.pad(z, pad, mode="symmetric")
    dims = (1,) * (z.ndim - nsp) + (win,) * nsp
    s = jax.lax.reduce_window(zp, 0.0, jax.lax.add, dims, (1,) * z.ndim, "VALID")
    return s / (win**nsp)


def ssim(a: jax.Array, b: jax.Array, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> jax.Array:
    """Structural similarity of each pair of maps -> (B,).

    a, b: (B, H, W) for 2-D SSIM or (B, N) for the 1-D variant. Matches
    ``skimage.metrics.structural_similarity(win_size=7, data_range=R)`` with
    uniform 7-wide windows, sample covariance and the mean over the window-valid
    interior, where R = max - min over both maps (Quantus's ``ssim``). When both
    maps are constant and equal (R = 0) the score is 1.
    """
    nsp = a.ndim - 1
    red = tuple(range(1, a.ndim))
    rng = jnp.maximum(a.max(axis=red), b.max(axis=red)) - jnp.minimum(a.min(axis=red),
                                                                       b.min(axis=red))
    rng_b = rng.reshape((-1,) + (1,) * nsp)
    ux, uy = _box_mean(a, win_size), _box_mean(b, win_size)
    uxx, uyy, uxy = _box_mean(a * a, win_size), _box_mean(b * b, win_size), _box_mean(a * b,
                                                                                       win_size)
    npx = win_size**nsp
    cov = npx / (npx - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = (k1 * rng_b) ** 2, (k2 * rng_b) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    p = (win_size - 1) // 2
    crop = (slice(None),) + (slice(p, -p if p else None),) * nsp
    val = s[crop].mean(axis=red)
    return jnp.where(rng == 0, 1.0, val)


SIMILARITIES = ("pearson", "spearman", "ssim", "ssim_flat")


Similarity = Callable[[jax.Array, jax.Array], jax.Array]


def similarity_fn(name: str, arg: str = "similarity") -> Similarity:
    """Return f(a, b) -> (B,) for maps a, b of shape (B, H, W).

    "pearson"/"spearman": correlation of the flattened maps; "ssim": 2-D SSIM
    (Wang et al. 2004, as in the metrics' papers); "ssim_flat": SSIM of the
    flattened maps as 1-D signals, which is what Quantus 0.6.0's ``ssim`` computes
    (it reshapes the maps to (B, H*W) first).
    """
    check_choice(name, arg, SIMILARITIES)
    if name == "pearson":
        return lambda a, b: pearson(flat(a), flat(b))
    if name == "spearman":
        return lambda a, b: spearman(flat(a), flat(b))
    if name == "ssim":
        return lambda a, b: ssim(a, b)
    return lambda a, b: ssim(flat(a), flat(b))


def check_ssim_size(name: str, h: int, w: int, arg: str = "similarity") -> None:
    """SSIM needs maps at least 7 pixels wide."""
    if name == "ssim" and min(h, w) < 7:
        raise ExplanationError(f"{arg}: 'ssim' needs maps of at least 7x7 pixels, got {h}x{w}")


# ----------------------------------------------------------------------------- models


class Forward:
    """A hashable handle on a model's structure, usable as a static jit argument.

    ``fwd.apply(params, x)`` runs the model; ``fwd.model(params)`` rebuilds a model
    object (NNX module or :class:`LinenModel`) from params, for explainers.
    """

    def __init__(self, adapter: Adapter):
        # a copy holding only the parameters' shapes: jax's jit caches hold static
        # arguments, and a cached handle must not keep a deleted model's arrays alive
        self.adapter = copy.copy(adapter)
        self.adapter.params = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), adapter.params)
        if adapter.kind == "nnx":
            self.key = ("nnx", adapter.graphdef)
        else:
            self.key = ("linen", adapter.module, tuple(sorted(adapter.apply_kwargs.items())))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Forward) and self.key == other.key

    def apply(self, params: Any, x: jax.Array) -> jax.Array:
        # max-pools with the lowering measured fastest for this backend and shape
        # (same values and derivatives as the model's own; jaxlrp._lrp.fast_forward)
        return fast_forward.apply(self.adapter, params, x)

    def model(self, params: Any) -> Any:
        if self.adapter.kind == "nnx":
            return nnx.merge(self.adapter.graphdef, params)
        return LinenModel(self.adapter.module, params, self.key[2])


def model_handle(model: Any, x: jax.Array, name: str = "model") -> tuple[Forward, Any, int]:
    """Wrap ``model``; check it maps x to (B, K) logits. Returns (handle, params, K)."""
    from jaxlrp._tracing import apply_checked

    adapter = as_adapter(model, name)
    out = apply_checked(adapter, x)
    return Forward(adapter), adapter.params, int(out.shape[-1])


def check_inputs(x: Any, name: str = "x") -> jax.Array:
    """Images (B, H, W, C), finite floats."""
    return check_images(x, name)


def batched_apply(f: Callable[[jax.Array], jax.Array], xs: jax.Array,
                  chunk_size: int | None) -> jax.Array:
    """Apply ``f`` (a batch function (n, ...) -> (n, ...)) to xs (N, ...) in chunks.

    With ``chunk_size`` None or >= N, one call. Otherwise xs is padded to a
    multiple of chunk_size and evaluated with ``jax.lax.map`` over the chunks, so
    only ``chunk_size`` inputs are live at a time.
    """
    n = xs.shape[0]
    if chunk_size is None or chunk_size >= n:
        return f(xs)
    m = math.ceil(n / chunk_size)
    pad = m * chunk_size - n
    xp = jnp.concatenate([xs, jnp.repeat(xs[:1], pad, axis=0)]) if pad else xs
    out = jax.lax.map(f, xp.reshape((m, chunk_size) + xs.shape[1:]))
    out = out.reshape((m * chunk_size,) + out.shape[2:])
    return out[:n]


def check_chunk(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    return check_int(chunk_size, "chunk_size")


def score_of(logits: jax.Array, y: jax.Array, softmax: bool) -> jax.Array:
    """(B, K) outputs -> (B,) score of class y (softmax probability if ``softmax``)."""
    if softmax:
        logits = jax.nn.softmax(logits, axis=-1)
    return jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
