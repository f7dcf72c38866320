"""Figures: heatmap overlays, side-by-side comparisons and metric bar charts (matplotlib).

Only the command line, notebooks and scripts import this module; explainers and metrics
never do. Matplotlib runs on the non-interactive Agg backend (no display needed).

* :func:`overlay` -- one map over its image, with a colour bar and the predicted class.
* :func:`compare` -- the image next to several maps (e.g. Grad-CAM | LRP | hybrid).
* :func:`save` -- write a figure atomically (temporary file + ``os.replace``).
* :func:`metric_chart` -- a bar chart of evaluation results, one panel per category.

Images are ``(H, W, 3)`` (or ``(H, W)`` / ``(H, W, 1)`` grey) uint8 in 0..255 or float
in [0, 1]; maps are ``(H, W)`` (any resolution: a map is stretched over the whole image,
edge to edge, as a bilinear upsampling with ``align_corners=False`` would place it).
Non-negative maps use ``jet``; signed maps (LRP relevance) use the diverging ``bwr``
centred at 0, saturating at the 99th percentile of ``|value|`` (:data:`SIGNED_PERCENTILE`),
with opacity growing with ``|value|`` so that zero relevance shows the photo.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere in this process

import matplotlib.colors as mcolors  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from jaxlrp._atomic import atomic_write  # noqa: E402
from jaxlrp.errors import ExplanationError  # noqa: E402

DPI = 100
"""Resolution of saved figures: a figure of ``w x h`` inches becomes ``100w x 100h`` pixels."""

PANEL_INCHES = 3.2
"""Side of one image panel in :func:`compare` and in grids."""

SIGNED_PERCENTILE = 99.0
"""Signed maps saturate at this percentile of ``|value|`` (LRP relevance is heavy-tailed:
a few pixels can hold most of it, which would leave the rest of a max-scaled map blank)."""


# ----------------------------------------------------------------------------- inputs


def as_display_image(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as float ``(H, W, 3)`` in [0, 1] for display.

    Accepts uint8 (0..255) or float ([0, 1]) arrays of shape (H, W), (H, W, 1) or (H, W, 3).
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3 or min(arr.shape[:2]) == 0:
        raise ExplanationError(
            f"{name}: expected an image of shape (H, W, 3), (H, W, 1) or (H, W), "
            f"got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ExplanationError(
                f"{name}: a float image must hold finite values in [0, 1], got range "
                f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}] (pass uint8 for 0..255)"
            )
        return arr.astype(np.float32)
    raise ExplanationError(f"{name}: expected dtype uint8 or float, got {arr.dtype}")


def as_map(heatmap: Any, name: str = "heatmap") -> np.ndarray:
    """``heatmap`` as float64 ``(H, W)``; NaN entries are kept (drawn transparent)."""
    arr = np.asarray(heatmap)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise ExplanationError(f"{name}: expected a map of shape (H, W), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ExplanationError(f"{name}: expected a numeric map, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.any(np.isinf(arr)):
        raise ExplanationError(f"{name}: the map holds infinite values")
    return arr


def is_signed(heatmap: np.ndarray) -> bool:
    """True when the map has negative entries (ignoring NaN)."""
    finite = heatmap[np.isfinite(heatmap)]
    return finite.size > 0 and bool(finite.min() < 0)


# ----------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Figure:
    # Figure() without pyplot: no global state, garbage-collected with its last reference.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _title(title: str | None, class_name: str | None) -> str | None:
    parts = [p for p in (title, None if class_name is None else f"predicted: {class_name}") if p]
    return "\n".join(parts) if parts else None


def signed_scale(heatmap: np.ndarray, percentile: float | None = SIGNED_PERCENTILE) -> float:
    """The colour-scale bound ``m`` of a signed map: a percentile of ``|value|`` (or the max).

    Falls back to the max when the percentile is 0; 1 for an all-zero or all-NaN map.
    """
    finite = np.abs(heatmap[np.isfinite(heatmap)])
    if finite.size == 0:
        return 1.0
    m = float(np.percentile(finite, percentile)) if percentile is not None else 0.0
    if not m > 0:
        m = float(finite.max())
    return m if m > 0 else 1.0


def draw_map(
    ax: Any,
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    cmap: str | None = None,
    alpha: float = 0.5,
    signed: bool | None = None,
    percentile: float | None = SIGNED_PERCENTILE,
) -> Any:
    """Draw ``heatmap`` over ``image`` on ``ax``; return the map's ``AxesImage``.

    ``signed=None`` decides from the values. Unsigned maps are drawn with ``cmap``
    (default ``jet``) from their min to their max at constant opacity ``alpha``; signed
    maps with ``cmap`` (default ``bwr``) on ``[-m, m]`` with ``m`` the ``percentile``-th
    percentile of ``|value|`` (None: the max; values beyond ``m`` saturate), with opacity
    ``alpha * min(|value| / m, 1)`` (transparent where the relevance is 0).
    """
    h, w = image.shape[:2]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # both layers cover the same pixel area
    ax.imshow(image, extent=extent, interpolation="bilinear")
    signed = is_signed(heatmap) if signed is None else signed
    finite = heatmap[np.isfinite(heatmap)]
    if signed:
        m = signed_scale(heatmap, percentile)
        norm = mcolors.Normalize(vmin=-m, vmax=m)
        opacity = np.nan_to_num(alpha * np.clip(np.abs(heatmap) / m, 0.0, 1.0))
        im = ax.imshow(heatmap, cmap=cmap or "bwr", norm=norm, alpha=opacity, extent=extent,
                       interpolation="bilinear")
    else:
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        if hi <= lo:
            hi = lo + 1.0
        im = ax.imshow(heatmap, cmap=cmap or "jet", vmin=lo, vmax=hi, alpha=alpha,
                       extent=extent, interpolation="bilinear")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    return im


def overlay(
    image: Any,
    heatmap: Any,
    *,
    title: str | None = None,
    class_name: str | None = None,
    cmap: str | None = "jet",
    alpha: float = 0.5,
    ax: Any = None,
    colorbar: bool = True,
    signed: bool | None = None,
    percentile: float | None = SIGNED_PERCENTILE,
) -> Figure:
    """One heatmap over its image.

    Args:
      image: (H, W, 3) uint8 or float in [0, 1].
      heatmap: (h, w) map, stretched over the image.
      title: first title line (e.g. the method's name).
      class_name: shown as ``predicted: <class_name>`` under the title.
      cmap: colour map for non-negative maps (``jet``); signed maps use ``bwr`` unless
        ``cmap`` names another map than ``jet``.
      alpha: opacity of the map (signed maps: the opacity at ``max |value|``).
      ax: draw into this matplotlib Axes instead of a new 4.8 x 4 inch figure.
      colorbar: add a colour bar.
      signed: force the signed (diverging, centred at 0) or unsigned style; None decides
        from the values.
      percentile: signed maps saturate at this percentile of ``|value|`` (None: the max).
    Returns:
      The Figure (``ax.figure`` when ``ax`` is given).
    """
    img = as_display_image(image)
    hm = as_map(heatmap)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ExplanationError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    signed = is_signed(hm) if signed is None else bool(signed)
    chosen = None if (signed and cmap == "jet") else cmap
    if ax is None:
        fig = _new_figure(4.8, 4.0)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    im = draw_map(ax, img, hm, cmap=chosen, alpha=alpha, signed=signed, percentile=percentile)
    text = _title(title, class_name)
    if text:
        ax.set_title(text, fontsize=10)
    if colorbar:
        _colorbar(fig, ax, im, signed, percentile)
    return fig


def _colorbar(fig: Figure, ax: Any, im: Any, signed: bool, percentile: float | None) -> Any:
    # The bar shows the colours at full opacity.
    mappable = matplotlib.cm.ScalarMappable(norm=im.norm, cmap=im.cmap)
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=8)
    if signed:
        label = "signed" if percentile is None else f"signed, saturates at p{percentile:g} |value|"
        bar.set_label(label, fontsize=8)
    return bar


def compare(
    image: Any,
    maps: Mapping[str, Any],
    *,
    class_name: str | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    percentile: float | None = SIGNED_PERCENTILE,
) -> Figure:
    """The image, then each map over it, side by side, each with its colour bar.

    Args:
      image: (H, W, 3) uint8 or float in [0, 1].
      maps: panel title -> (h, w) map, in display order (e.g. ``{"Grad-CAM++": ...,
        "LRP": ..., "hybrid": ...}``). Maps with negative values, or whose title starts
        with "LRP", are drawn signed (``bwr`` centred at 0).
      class_name: the predicted class, shown in the figure's title.
      title: figure title (before the class name).
      alpha, percentile: as in :func:`overlay`.
    Returns:
      A Figure of ``(1 + len(maps)) * 3.2`` x 3.6 inches (100 dpi when saved).
    """
    img = as_display_image(image)
    if not isinstance(maps, Mapping) or not maps:
        raise ExplanationError(
            f"maps: expected a non-empty mapping of panel title -> (H, W) map, got {maps!r:.60}"
        )
    arrays = {str(k): as_map(v, f"maps[{k!r}]") for k, v in maps.items()}
    fig = _new_figure(PANEL_INCHES * (1 + len(arrays)), PANEL_INCHES + 0.4)
    axes = fig.subplots(1, 1 + len(arrays))
    axes[0].imshow(img, interpolation="bilinear")
    axes[0].set_title("input", fontsize=10)
    axes[0].set_axis_off()
    for ax, (name, hm) in zip(axes[1:], arrays.items(), strict=True):
        signed = is_signed(hm) or name.lower().startswith("lrp")
        im = draw_map(ax, img, hm, alpha=alpha, signed=signed, percentile=percentile)
        ax.set_title(name, fontsize=10)
        _colorbar(fig, ax, im, signed, percentile)
    text = _title(title, class_name)
    if text:
        fig.suptitle(text.replace("\n", " - "), fontsize=11)
    return fig


def grid(
    images: list[Any],
    maps: Mapping[str, list[Any]],
    *,
    row_labels: list[str] | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    percentile: float | None = SIGNED_PERCENTILE,
) -> Figure:
    """Rows of ``image | map 1 | map 2 | ...``: one row per image, one column per method.

    Args:
      images: N images (H, W, 3).
      maps: column title -> N maps (h, w) (signed columns as in :func:`compare`).
      row_labels: N labels shown left of each row (e.g. the predicted class).
      title: figure title.
      alpha, percentile: as in :func:`overlay`.
    """
    n = len(images)
    if n == 0:
        raise ExplanationError("images: expected at least one image, got none")
    for name, column in maps.items():
        if len(column) != n:
            raise ExplanationError(
                f"maps[{name!r}]: expected {n} maps (one per image), got {len(column)}"
            )
    if row_labels is not None and len(row_labels) != n:
        raise ExplanationError(f"row_labels: expected {n} labels, got {len(row_labels)}")
    cols = 1 + len(maps)
    side = 2.2
    fig = _new_figure(side * cols, side * n + (0.4 if title else 0.1))
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    signed_cols = {}
    for name, column in maps.items():
        arrays = [as_map(m, f"maps[{name!r}]") for m in column]
        signed_cols[name] = name.lower().startswith("lrp") or any(is_signed(a) for a in arrays)
    for i, image in enumerate(images):
        img = as_display_image(image, f"images[{i}]")
        axes[i, 0].imshow(img, interpolation="bilinear")
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=9)
        for j, (name, column) in enumerate(maps.items(), start=1):
            draw_map(axes[i, j], img, as_map(column[i]), alpha=alpha, signed=signed_cols[name],
                     percentile=percentile)
            if i == 0:
                axes[i, j].set_title(name, fontsize=10)
    axes[0, 0].set_title("input", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ----------------------------------------------------------------------------- output


def save(fig: Figure, path: str | os.PathLike, *, close: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, e.g. ``.png``).

    The figure is drawn into a temporary file in the same folder, then moved over
    ``path`` with ``os.replace``, so a reader never sees a half-written file and an
    interrupted run leaves no partial output. Parent folders are created.
    Returns the path.
    """
    if not isinstance(fig, Figure):
        raise ExplanationError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}")
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ExplanationError(f"path: expected a file name with a suffix such as .png, got {path}")
    try:
        # zlib level 1 for PNG: ~0.06 s less per figure than the default 6, files ~20% larger
        extra = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=DPI, **extra))
    finally:
        if close:
            fig.clf()
    return path


def metric_chart(
    table: Mapping[str, Mapping[str, tuple[float, float]]],
    categories: Mapping[str, str],
    path: str | os.PathLike,
    *,
    higher_is_better: Mapping[str, bool] | None = None,
    title: str | None = None,
) -> Path:
    """Bar chart of evaluation results: one panel per category, explainers side by side.

    Args:
      table: ``table[explainer][metric] = (mean, stderr)``.
      categories: metric -> category (e.g. ``"FaithfulnessCorrelation" -> "Faithfulness"``);
        panels appear in the order of first appearance; a category with several metrics
        groups the bars by metric inside its panel.
      path: output image file (written atomically).
      higher_is_better: optional metric -> bool, shown as an arrow after the metric name.
      title: figure title.
    Returns:
      The path written. Error bars are +-1 standard error; NaN means are left out.
    """
    if not isinstance(table, Mapping) or not table:
        raise ExplanationError("table: expected {explainer: {metric: (mean, stderr)}}, got none")
    explainers = [str(e) for e in table]
    metrics: list[str] = []
    for e, row in table.items():
        if not isinstance(row, Mapping):
            raise ExplanationError(
                f"table[{e!r}]: expected a mapping metric -> (mean, stderr), got "
                f"{type(row).__name__}"
            )
        for m, value in row.items():
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ExplanationError(
                    f"table[{e!r}][{m!r}]: expected (mean, stderr), got {value!r}"
                )
            if m not in metrics:
                metrics.append(m)
    missing = [m for m in metrics if m not in categories]
    if missing:
        raise ExplanationError(f"categories: no category for metric(s) {missing}")
    cats: list[str] = []
    for m in metrics:
        if categories[m] not in cats:
            cats.append(categories[m])
    hib = dict(higher_is_better or {})

    ncols = min(len(cats), 3)
    nrows = math.ceil(len(cats) / ncols)
    fig = _new_figure(4.2 * ncols, 3.4 * nrows + (0.5 if title else 0.2) + 0.4)
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colors = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(explainers))]
    width = 0.8 / len(explainers)
    for ax, cat in zip(axes, cats, strict=False):
        cat_metrics = [m for m in metrics if categories[m] == cat]
        for i, e in enumerate(explainers):
            xs, means, errs = [], [], []
            for k, m in enumerate(cat_metrics):
                mean, err = table[e].get(m, (np.nan, np.nan))
                xs.append(k - 0.4 + width * (i + 0.5))
                means.append(float(mean))
                errs.append(0.0 if err is None or not np.isfinite(float(err)) else float(err))
            bars = ax.bar(xs, np.nan_to_num(means), width, yerr=errs, capsize=3,
                          color=colors[i], label=e)
            for b, v, e in zip(bars, means, errs, strict=True):
                if not np.isfinite(v):
                    b.set_visible(False)
                    continue
                tip = v + e if v >= 0 else v - e  # past the error bar
                ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, tip),
                            xytext=(0, 2 if v >= 0 else -9), textcoords="offset points",
                            ha="center", fontsize=7)
        labels = [m + ("" if m not in hib else (" (↑)" if hib[m] else " (↓)"))
                  for m in cat_metrics]
        ax.set_xticks(range(len(cat_metrics)), labels, fontsize=8)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(cat, fontsize=11)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
    for ax in axes[len(cats):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(explainers), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    return save(fig, path)


__all__ = [
    "DPI",
    "as_display_image",
    "as_map",
    "compare",
    "draw_map",
    "grid",
    "is_signed",
    "signed_scale",
    "metric_chart",
    "overlay",
    "save",
]
