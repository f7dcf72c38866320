"""The embedded localisation dataset: procedurally drawn shapes on cluttered textures.

Every image is 64x64 RGB, float32 in [0, 1], and shows exactly one large object
(diameter 18-30 px, random position, rotation and colour) of one of eight classes,
drawn over a random texture (smooth noise, gradient, stripes or checkerboard, plus
pixel noise) and over 1-3 small distractor shapes of *other* classes and 1-2 thin
line fragments. The object is painted last in one flat colour with hard edges, so
its ground-truth mask is exactly the set of pixels that carry the object's colour.

Generation is deterministic: chunk ``c`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, s, c])``, so ``embedded(split, n)`` is the first
``n`` examples of the full split, and train and test never share a random stream.
Labels come in groups of eight that each hold every class once (in random order),
so any prefix is balanced to within one example per class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from jaxlrp.data.dataset import Dataset
from jaxlrp.errors import ExplanationError

SIZE = 64
CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "bars",
)
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_SIZES = {"train": 12000, "test": 2400}
_SPLIT_IDS = {"train": 0, "test": 1}
_CHUNK = 256  # examples per independently seeded chunk (a multiple of NUM_CLASSES)

# Object and distractor radii in pixels (the shape fits in a disc of this radius).
OBJECT_RADIUS = (9.0, 15.0)
DISTRACTOR_RADIUS = (2.5, 4.5)
# Least RGB distance between the object's colour and the mean of its background.
MIN_CONTRAST = 0.6

# Window widths (pixels) in which shapes are rasterised: width // 2 >= radius + 1.
_OBJECT_WINDOW = 32
_DISTRACTOR_WINDOW = 14

_STAR_INNER = 0.42
_STAR_HALF = np.pi / 5  # half the angle between two star points (36 degrees)
_STAR_DX = _STAR_INNER * np.cos(_STAR_HALF) - 1.0
_STAR_DY = _STAR_INNER * np.sin(_STAR_HALF)


# Each shape is a predicate on local coordinates (u, v), in units of the radius, with
# the shape centred at the origin and contained in the unit disc.
def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1, inradius 0.5; vertices at angles -90, 30, 150 deg.
    c, s = np.float32(np.sqrt(3) / 2), np.float32(0.5)
    return (v <= 0.5) & (c * u - s * v <= 0.5) & (-c * u - s * v <= 0.5)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.58**2)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points at radius 1, inner corners at radius _STAR_INNER. Fold the angle into
    # one half-sector [0, 36 deg] and test against the edge from the point (1, 0) to
    # the inner corner.
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    phi = np.abs(np.mod(theta, 2 * _STAR_HALF) - _STAR_HALF)
    phi = _STAR_HALF - phi  # 0 at a point, 36 deg at an inner corner
    qx, qy = rho * np.cos(phi), rho * np.sin(phi)
    return _STAR_DX * qy - _STAR_DY * (qx - 1.0) >= 0.0


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) / 0.55 + np.abs(v) <= 1.0


def _bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au = np.abs(u)
    return (au >= 0.22) & (au <= 0.6) & (np.abs(v) <= 0.78)


SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _disc,
    _square,
    _triangle,
    _cross,
    _ring,
    _star,
    _diamond,
    _bars,
)

_GRID = np.arange(SIZE, dtype=np.float32) + 0.5  # pixel centres


def _window(center: np.ndarray, width: int) -> np.ndarray:
    """(B, width) pixel indices of a window of ``width`` pixels around ``center``."""
    origin = np.clip(np.floor(center).astype(np.int64) - width // 2, 0, SIZE - width)
    return origin[:, None] + np.arange(width)


def _local_coords(
    rows: np.ndarray,
    cols: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, h, w) coordinates of the pixel centres ``rows x cols`` in each shape's frame."""
    f32 = np.float32
    dx = (cols.astype(f32) + f32(0.5) - cx.astype(f32)[:, None])[:, None, :]
    dy = (rows.astype(f32) + f32(0.5) - cy.astype(f32)[:, None])[:, :, None]
    c = (np.cos(angle) / scale).astype(f32)[:, None, None]
    s = (np.sin(angle) / scale).astype(f32)[:, None, None]
    return dx * c + dy * s, dy * c - dx * s


def _shape_window(
    kind: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise shapes inside a ``width``-pixel window around each centre.

    The window holds every pixel whose centre can lie in the shape as long as
    ``width // 2 >= radius + 1`` and the shape lies inside the image.
    Returns (B, width, width) bool, and the window's rows and cols (B, width).
    """
    rows, cols = _window(cy, width), _window(cx, width)
    u, v = _local_coords(rows, cols, cx, cy, radius, angle)
    out = np.zeros(u.shape, bool)
    for k in np.unique(kind):
        sel = kind == k
        out[sel] = SHAPES[int(k)](u[sel], v[sel])
    return out, rows, cols


def _scatter(win: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Place (B, h, w) windows into (B, 64, 64) zero canvases."""
    out = np.zeros((win.shape[0], SIZE, SIZE), win.dtype)
    out[np.arange(win.shape[0])[:, None, None], rows[:, :, None], cols[:, None, :]] = win
    return out


def _paint(
    images: np.ndarray, win: np.ndarray, rows: np.ndarray, cols: np.ndarray, color: np.ndarray
) -> None:
    """Paint ``color`` (B, 3) into ``images`` (B, 64, 64, 3) where the window mask is set."""
    idx = (np.arange(win.shape[0])[:, None, None], rows[:, :, None], cols[:, None, :])
    patch = images[idx]
    np.copyto(patch, color[:, None, None, :], where=win[..., None])
    images[idx] = patch


def draw_shapes(
    kind: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Rasterise one shape per image.

    Args:
      kind: (B,) class indices into ``CLASS_NAMES``.
      cx, cy: (B,) centre in pixels (pixel ``(i, j)`` has its centre at ``(j+.5, i+.5)``).
      radius: (B,) radius in pixels.
      angle: (B,) rotation in radians.
    Returns:
      (B, 64, 64) bool: pixels whose centre lies inside the shape.
    """
    kind, cx, cy, radius, angle = (
        np.atleast_1d(np.asarray(a)) for a in (kind, cx, cy, radius, angle)
    )
    full = np.arange(SIZE)[None, :].repeat(kind.shape[0], axis=0)
    u, v = _local_coords(full, full, cx, cy, radius, angle)
    out = np.zeros(u.shape, bool)
    for k in np.unique(kind):
        sel = kind == k
        out[sel] = SHAPES[int(k)](u[sel], v[sel])
    return out


_FRAGMENT_WINDOW = 16


def _fragments(
    rng: np.random.Generator, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A thin line segment per image (length 6-14 px, width 1-2 px), as a 16-px window."""
    f32 = np.float32
    cx = rng.uniform(2, SIZE - 2, b).astype(f32)
    cy = rng.uniform(2, SIZE - 2, b).astype(f32)
    angle = rng.uniform(0, np.pi, b).astype(f32)
    half_len = rng.uniform(3, 7, b).astype(f32)[:, None, None]
    half_w = rng.uniform(0.5, 1.0, b).astype(f32)[:, None, None]
    rows, cols = _window(cy, _FRAGMENT_WINDOW), _window(cx, _FRAGMENT_WINDOW)
    u, v = _local_coords(rows, cols, cx, cy, np.ones(b, f32), angle)
    return (np.abs(u) <= half_len) & (np.abs(v) <= half_w), rows, cols


def _upsample_matrix(low: int) -> np.ndarray:
    """(SIZE, low) bilinear interpolation matrix (half-pixel centres, clamped)."""
    pos = (np.arange(SIZE) + 0.5) * low / SIZE - 0.5
    pos = np.clip(pos, 0, low - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, low - 1)
    w = pos - i0
    m = np.zeros((SIZE, low), np.float32)
    m[np.arange(SIZE), i0] += 1 - w
    m[np.arange(SIZE), i1] += w
    return m


_UP8 = _upsample_matrix(8)


def _textures(rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Random backgrounds (B, 64, 64, 3) float32 in [0, 1] and their kind (B,) int."""
    f32 = np.float32
    kind = rng.integers(0, 4, b)
    base = rng.uniform(0.15, 0.85, (b, 3)).astype(f32)
    other = np.clip(base + rng.normal(0, 0.12, (b, 3)), 0, 1).astype(f32)
    angle = rng.uniform(0, 2 * np.pi, b).astype(f32)
    freq = rng.uniform(2.5, 7.0, b).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, b).astype(f32)
    low = rng.uniform(-1, 1, (b, 8, 8, 3)).astype(f32)
    noise = rng.random((b, SIZE, SIZE, 1), dtype=f32)  # uniform grey pixel noise

    xs = _GRID[None, None, :] / SIZE
    ys = _GRID[None, :, None] / SIZE
    proj = xs * np.cos(angle)[:, None, None] + ys * np.sin(angle)[:, None, None]
    # t in [0, 1]: how much of ``other`` to mix into ``base`` at each pixel.
    t = np.empty((b, SIZE, SIZE), f32)
    for k in range(4):
        sel = kind == k
        if not sel.any():
            continue
        if k == 0:  # gradient
            # proj is linear in (x, y): its extremes are at the corners of the grid
            c, s = np.cos(angle[sel]), np.sin(angle[sel])
            e0, e1 = _GRID[0] / SIZE, _GRID[-1] / SIZE
            lo = (np.minimum(c * e0, c * e1) + np.minimum(s * e0, s * e1))[:, None, None]
            hi = (np.maximum(c * e0, c * e1) + np.maximum(s * e0, s * e1))[:, None, None]
            t[sel] = (proj[sel] - lo) / (hi - lo)
        elif k == 1:  # stripes
            t[sel] = 0.5 + 0.5 * np.sin(
                2 * np.pi * freq[sel, None, None] * proj[sel] + phase[sel, None, None]
            )
        elif k == 2:  # rotated checkerboard
            q = ys * np.cos(angle[sel])[:, None, None] - xs * np.sin(angle[sel])[:, None, None]
            f = freq[sel, None, None]
            t[sel] = (np.sin(2 * np.pi * f * proj[sel]) * np.sin(2 * np.pi * f * q) > 0)
        else:  # smooth noise: a per-pixel mix weight from upsampled 8x8 noise
            t[sel] = 0.5 + 0.5 * (_UP8 @ low[sel, :, :, 0] @ _UP8.T)
    img = t[..., None] * (other - base)[:, None, None, :]
    img += base[:, None, None, :] - f32(0.05)
    # smooth colour noise on every texture: (64, 8) @ (b, 64, 8, 3) -> (b, 64, 64, 3)
    low_rows = (_UP8 @ (f32(0.06) * low).reshape(b, 8, 24)).reshape(b, SIZE, 8, 3)
    img += _UP8 @ low_rows
    # grey pixel noise, std 0.1 / sqrt(12) = 0.03
    noise *= f32(0.1)
    img += noise
    return np.clip(img, 0, 1, out=img), kind


def _contrasting_colors(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    """(B, 3) colours in [0.05, 0.95] at RGB distance >= MIN_CONTRAST from ``ref`` (B, 3)."""
    b = ref.shape[0]
    cand = rng.uniform(0.05, 0.95, (b, 16, 3)).astype(np.float32)
    dist = np.linalg.norm(cand - ref[:, None, :], axis=-1)
    ok = dist >= MIN_CONTRAST
    pick = np.where(ok.any(axis=1), np.argmax(ok, axis=1), np.argmax(dist, axis=1))
    return cand[np.arange(b), pick]


def _chunk(seed: int, split_id: int, index: int) -> dict[str, np.ndarray]:
    """Generate one chunk of ``_CHUNK`` examples."""
    rng = np.random.default_rng([seed, split_id, index])
    b = _CHUNK
    f32 = np.float32
    labels = np.concatenate(
        [rng.permutation(NUM_CLASSES) for _ in range(b // NUM_CLASSES)]
    ).astype(np.int32)

    images, texture = _textures(rng, b)

    # Distractors: 3 small shapes of other classes (each shown with probability 0.8,
    # at least one always shown) and 2 line fragments (the second with probability 0.5).
    shown = rng.uniform(size=(b, 3)) < 0.8
    shown[:, 0] = True
    for j in range(3):
        kind = (labels + rng.integers(1, NUM_CLASSES, b)) % NUM_CLASSES
        r = rng.uniform(*DISTRACTOR_RADIUS, b).astype(f32)
        cx = rng.uniform(r, SIZE - r)
        cy = rng.uniform(r, SIZE - r)
        ang = rng.uniform(0, 2 * np.pi, b)
        col = rng.uniform(0, 1, (b, 3)).astype(f32)
        win, rows, cols = _shape_window(kind, cx, cy, r, ang, _DISTRACTOR_WINDOW)
        _paint(images, win & shown[:, j, None, None], rows, cols, col)
    frag_shown = np.stack([np.ones(b, bool), rng.uniform(size=b) < 0.5], axis=1)
    for j in range(2):
        col = rng.uniform(0, 1, (b, 3)).astype(f32)
        win, rows, cols = _fragments(rng, b)
        _paint(images, win & frag_shown[:, j, None, None], rows, cols, col)

    # The object, painted last in one flat colour.
    radius = rng.uniform(*OBJECT_RADIUS, b).astype(f32)
    cx = rng.uniform(radius + 1, SIZE - 1 - radius).astype(f32)
    cy = rng.uniform(radius + 1, SIZE - 1 - radius).astype(f32)
    angle = rng.uniform(0, 2 * np.pi, b).astype(f32)
    bg_mean = images[:, ::4, ::4].mean(axis=(1, 2))
    color = _contrasting_colors(rng, bg_mean)
    win, rows, cols = _shape_window(labels, cx, cy, radius, angle, _OBJECT_WINDOW)
    _paint(images, win, rows, cols, color)
    masks = _scatter(win, rows, cols)
    return {
        "images": images,
        "labels": labels,
        "masks": masks,
        "center": np.stack([cx, cy], axis=1),
        "radius": radius,
        "angle": angle,
        "color": color,
        "texture": texture.astype(np.int32),
    }


def _check_split(split: object) -> str:
    if not isinstance(split, str) or split not in SPLIT_SIZES:
        raise ExplanationError(
            f"split: expected one of {sorted(SPLIT_SIZES)} for the embedded dataset, got {split!r}"
        )
    return split


def _check_n(n: object, name: str = "n") -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ExplanationError(f"{name}: expected None or a positive int, got {n!r}")
    return int(n)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ExplanationError(f"seed: expected a non-negative int, got {seed!r}")
    return int(seed)


def generate(split: str, n: int, seed: int) -> Dataset:
    """Generate the first ``n`` examples of ``split`` (uncached; see :func:`embedded`)."""
    split_id = _SPLIT_IDS[_check_split(split)]
    parts: dict[str, np.ndarray] = {}
    for c in range(-(-n // _CHUNK)):
        chunk = _chunk(seed, split_id, c)
        lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, n)
        for key, arr in chunk.items():
            if key not in parts:
                parts[key] = np.empty((n,) + arr.shape[1:], arr.dtype)
            parts[key][lo:hi] = arr[: hi - lo]
    for arr in parts.values():
        arr.flags.writeable = False
    return Dataset(
        images=parts.pop("images"),
        labels=parts.pop("labels"),
        masks=parts.pop("masks"),
        class_names=CLASS_NAMES,
        meta=parts,
    )


@functools.lru_cache(maxsize=8)
def _cached(split: str, n: int, seed: int) -> Dataset:
    return generate(split, n, seed)


def embedded(split: str = "train", n: int | None = None, seed: int = 0) -> Dataset:
    """The embedded shapes-on-clutter localisation dataset (no download).

    Args:
      split: ``"train"`` (12000 examples) or ``"test"`` (2400 examples).
      n: number of examples (default: the whole split). Any positive ``n`` works; the
        result is always the first ``n`` examples of the (unbounded) split stream.
      seed: non-negative int; a different seed gives a different dataset.
    Returns:
      A :class:`Dataset` with images (n, 64, 64, 3) float32 in [0, 1], labels (n,)
      int32 in [0, 8), masks (n, 64, 64) bool (exactly the object's pixels),
      ``class_names`` = :data:`CLASS_NAMES`, and ``meta`` with the object's ``center``
      (n, 2) as (x, y) pixels, ``radius`` (n,), ``angle`` (n,) radians, ``color``
      (n, 3) and the background ``texture`` kind (n,). Arrays are read-only and cached
      per (split, n, seed) within the process.
    """
    split = _check_split(split)
    n = _check_n(n)
    seed = _check_seed(seed)
    return _cached(split, SPLIT_SIZES[split] if n is None else n, seed)
