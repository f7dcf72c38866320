"""Figures: overlays, comparisons, grids, atomic saving and the metric bar chart."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from jaxlrp import viz
from jaxlrp.errors import ExplanationError


def gray(h: int = 48, w: int = 64) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def hot_top_left(h: int = 12, w: int = 16) -> np.ndarray:
    m = np.zeros((h, w))
    m[: h // 2, : w // 2] = 1.0
    return m


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float64)


def test_overlay_png_size_title_and_colorbar(tmp_path):
    fig = viz.overlay(gray(), hot_top_left(), title="hybrid", class_name="tabby cat")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "hybrid\npredicted: tabby cat"
    assert len(fig.axes) == 2  # the image and its colour bar
    path = viz.save(fig, tmp_path / "o.png")
    with Image.open(path) as im:
        assert im.size == (480, 400)  # 4.8 x 4 in at 100 dpi
    assert len(viz.overlay(gray(), hot_top_left(), colorbar=False).axes) == 1


def test_overlay_is_aligned_with_the_image(tmp_path):
    # A map at a quarter of the image's resolution, hot in its top-left quadrant, must
    # colour the top-left quadrant of the image (not flipped, not shifted).
    fig = viz.overlay(gray(), hot_top_left(), colorbar=False, alpha=1.0)
    ax = fig.axes[0]
    heat = ax.images[1]
    assert tuple(heat.get_extent()) == tuple(ax.images[0].get_extent()) == (
        -0.5, 63.5, 47.5, -0.5)
    img = png(viz.save(fig, tmp_path / "a.png"))
    bbox = ax.get_window_extent()
    h = img.shape[0]
    x0, x1 = int(bbox.x0), int(bbox.x1)
    y0, y1 = h - int(bbox.y1), h - int(bbox.y0)  # image rows from the top
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    tl = img[y0 + 5:ym - 10, x0 + 5:xm - 10].mean(axis=(0, 1))
    br = img[ym + 10:y1 - 5, xm + 10:x1 - 5].mean(axis=(0, 1))
    assert tl[0] > 100 and tl[2] < 60  # jet's top: dark red
    assert br[2] > 100 and br[0] < 60  # jet's bottom: dark blue


def test_signed_maps_use_a_diverging_map_centred_at_zero():
    m = np.zeros((8, 8))
    m[0, 0], m[7, 7] = 2.0, -0.5
    im = viz.overlay(gray(), m).axes[0].images[1]
    assert im.get_cmap().name == "bwr"
    assert im.norm.vmin == -im.norm.vmax > -np.inf
    im = viz.overlay(gray(), np.abs(m), signed=True, percentile=None).axes[0].images[1]
    assert (im.get_cmap().name, im.norm.vmax) == ("bwr", 2.0)
    im = viz.overlay(gray(), np.abs(m)).axes[0].images[1]
    assert im.get_cmap().name == "jet" and (im.norm.vmin, im.norm.vmax) == (0.0, 2.0)


def test_signed_scale_percentile():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 50)) * 1e-3
    m[0, 0] = 100.0  # one outlier must not wash out the rest
    assert viz.signed_scale(m, 99.0) == pytest.approx(np.percentile(np.abs(m), 99.0))
    assert viz.signed_scale(m, None) == 100.0
    assert viz.signed_scale(np.zeros((3, 3))) == 1.0
    sparse = np.zeros((20, 20))
    sparse[0, 0] = -3.0  # the percentile is 0: fall back to the max
    assert viz.signed_scale(sparse, 99.0) == 3.0


def test_compare_panels_and_size(tmp_path):
    h = hot_top_left()
    fig = viz.compare(gray(), {"Grad-CAM++": h, "LRP": h * 0.5, "hybrid": h},
                      class_name="espresso", title="coffee")
    assert fig.axes[0].get_title() == "input"
    assert "espresso" in fig.get_suptitle() and "coffee" in fig.get_suptitle()
    assert len(fig.axes) == 1 + 3 + 3  # input, 3 maps, 3 colour bars
    # "LRP" panels are drawn signed even when the map happens to be >= 0.
    lrp_ax = next(ax for ax in fig.axes if ax.get_title() == "LRP")
    assert lrp_ax.images[1].get_cmap().name == "bwr"
    with Image.open(viz.save(fig, tmp_path / "c.png")) as im:
        assert im.size == (1280, 360)


def test_grid_shape_and_errors(tmp_path):
    imgs = [gray(), gray()]
    maps = {"A": [hot_top_left()] * 2, "LRP": [hot_top_left()] * 2}
    fig = viz.grid(imgs, maps, row_labels=["x", "y"], title="t")
    assert len(fig.axes) == 6
    with Image.open(viz.save(fig, tmp_path / "g.png")) as im:
        assert im.size == (660, 480)  # 3 columns and 2 rows of 2.2 in, + 0.4 in title
    with pytest.raises(ExplanationError, match="maps\\['A'\\]"):
        viz.grid(imgs, {"A": [hot_top_left()]})


@pytest.mark.parametrize(
    "image, heatmap, kwargs, match",
    [
        (np.full((8, 8, 3), 2.0), np.zeros((8, 8)), {}, "image: a float image"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8)), {}, "image: expected"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8)), {}, "heatmap: expected"),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), np.inf), {}, "heatmap: .*infinite"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), {"alpha": 2.0}, "alpha"),
    ],
)
def test_overlay_rejects_bad_input(image, heatmap, kwargs, match):
    with pytest.raises(ExplanationError, match=match):
        viz.overlay(image, heatmap, **kwargs)


def test_nan_maps_are_drawn_without_error(tmp_path):
    m = np.full((8, 8), np.nan)
    viz.save(viz.overlay(gray(), m), tmp_path / "nan.png")
    assert (tmp_path / "nan.png").is_file()


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    fig = viz.overlay(gray(), hot_top_left())

    def broken(fh, **kwargs):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        viz.save(fig, target)
    assert target.read_bytes() == b"old"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]  # no temporary left
    monkeypatch.undo()
    viz.save(viz.overlay(gray(), hot_top_left()), target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ExplanationError, match="suffix"):
        viz.save(viz.overlay(gray(), hot_top_left()), tmp_path / "noext")


def test_metric_chart(tmp_path):
    table = {
        "gradcam": {"FC": (0.1, 0.02), "AS": (0.3, 0.05), "SP": (0.4, 0.01),
                    "RRA": (0.5, 0.1), "RL": (0.6, 0.05)},
        "lrp": {"FC": (0.2, 0.03), "AS": (0.5, 0.05), "SP": (0.7, 0.02),
                "RRA": (0.4, 0.1), "RL": (float("nan"), float("nan"))},
        "hybrid": {"FC": (-0.1, 0.02), "AS": (0.2, 0.05), "SP": (0.8, 0.01),
                   "RRA": (0.6, 0.1), "RL": (0.7, 0.05)},
    }
    cats = {"FC": "Faithfulness", "AS": "Robustness", "SP": "Complexity",
            "RRA": "Localisation", "RL": "Randomisation"}
    path = viz.metric_chart(table, cats, tmp_path / "chart.png",
                            higher_is_better={"AS": False})
    with Image.open(path) as im:
        assert im.size == (1260, 740)  # 3 x 2 panels of 4.2 x 3.4 in (+ legend strip)
    # Two metrics in one category share a panel.
    path = viz.metric_chart(table, {**cats, "RL": "Localisation"}, tmp_path / "c2.png")
    with Image.open(path) as im:
        assert im.size[0] == 1260
    with pytest.raises(ExplanationError, match="categories: no category"):
        viz.metric_chart(table, {"FC": "Faithfulness"}, tmp_path / "bad.png")
    with pytest.raises(ExplanationError, match="mean, stderr"):
        viz.metric_chart({"a": {"FC": 0.3}}, cats, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
