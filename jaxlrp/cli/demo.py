"""``jaxlrp demo``: explain bundled photos and embedded images; no download."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from jaxlrp.cli.common import _fail, _Formatter, _say, panel_title
from jaxlrp.cli.explain import Plan, make_runner, run_batch, softmax
from jaxlrp.cli.loading import LoadedModel, load_model
from jaxlrp.errors import ExplanationError
from jaxlrp.models.registry import entry


def add_parser(sub: Any) -> None:
    """Add the ``demo`` subcommand to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "demo", help="explain bundled photos and embedded images; no download",
        description="Explain the four bundled photos with EfficientNet-Lite0 and eight "
                    "embedded test images with the default VGG, the reference ConvNeXt "
                    "and the reference ViT (Grad-CAM++ | LRP | hybrid), write one "
                    "comparison figure per image (<out>/photos/, <out>/embedded/, "
                    "<out>/embedded_convnext/, <out>/embedded_vit/) and one grid per model "
                    "(<out>/photos_grid.png, <out>/embedded_grid.png, "
                    "<out>/embedded_convnext_grid.png, <out>/embedded_vit_grid.png), and "
                    "print the predicted labels. LRP uses each model's default composite, "
                    "as 'jaxlrp explain' does: the paper's on the default model, "
                    "epsilon_plus_flat on EfficientNet-Lite0 (whose inputs are signed, "
                    "where z+ at the input layer is ill-suited) and AttnLRP on the ConvNeXt "
                    "(LayerNorm, GELU) and the ViT (attention, softmax, LayerNorm, GELU; "
                    "jaxlrp.models.registry). The ViT's CAM layer is its last block whose "
                    "patch tokens reach the class token, mapped to the 8x8 token grid. "
                    "Everything is bundled; nothing is downloaded.",
        formatter_class=_Formatter,
    )
    p.add_argument("--out", default="jaxlrp-demo", metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="fewer images (2 photos, 4 embedded images), for smoke tests")
    p.add_argument("--no-progress", action="store_true", help="hide progress messages")
    p.set_defaults(func=cmd_demo)


def _demo_part(lm: LoadedModel, names: list[str], xs: list, out: Path, title: str,
               expected: list[str], truth: bool) -> list[Path]:
    """Explain one batch (Grad-CAM++ | LRP | hybrid), write per-image and grid figures.

    LRP uses the model's default composite (``lm.composite``). ``expected``: per image,
    the reference label (``truth``: the ground truth, shown in the grid; else the
    reference PyTorch model's prediction, only printed).
    """
    from jaxlrp import viz

    plan = Plan("hybrid", "predicted", True, {}, {}).with_default_composite(lm.composite)
    runner = make_runner(plan)
    logits, maps = run_batch(runner, lm, xs, len(xs))
    probs = softmax(logits)
    preds = logits.argmax(-1)
    written = []
    shown = [lm.display(x) for x in xs]
    labels = []
    for i, name in enumerate(names):
        cls = lm.class_names[int(preds[i])]
        panels = {panel_title(k): maps[k][i] for k in plan.panels()}
        path = out / f"{name}_compare.png"
        viz.save(viz.compare(shown[i], panels, class_name=cls, title=name), path)
        written.append(path)
        labels.append(f"{cls} ({probs[i, preds[i]]:.2f})"
                      + (f"\ntrue: {expected[i]}" if truth else ""))
        ok = "" if expected[i] is None else ("  [as expected]" if cls == expected[i]
                                              else f"  [expected {expected[i]}]")
        _say(f"  {name}: predicted {cls!r}, p={probs[i, preds[i]]:.2f}{ok}")
    grid = viz.grid(shown, {panel_title(k): list(maps[k]) for k in plan.panels()},
                    row_labels=labels, title=title)
    path = out.parent / f"{out.name}_grid.png"
    viz.save(grid, path)
    written.append(path)
    return written


def cmd_demo(args: argparse.Namespace) -> int:
    """``jaxlrp demo``: see the subcommand's help."""
    import numpy as np

    from jaxlrp import photos
    from jaxlrp.data import embedded

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    grids = []

    comp = entry("efficientnet-lite0").composite
    t0 = time.perf_counter()
    _say(f"EfficientNet-Lite0 (ImageNet) on the bundled photos (LRP composite {comp}):")
    items = photos.load(["chelsea", "coffee"] if args.quick else None)
    lm = load_model("efficientnet-lite0")
    xs = [lm.prepare(p.image) for p in items]
    written = _demo_part(lm, [p.name for p in items], xs, out / "photos",
                         f"EfficientNet-Lite0: Grad-CAM++ | LRP ({lm.composite}) | hybrid",
                         [p.label_name for p in items], truth=False)
    grids.append(written[-1])
    _say(f"  part time: {time.perf_counter() - t0:.2f} s")

    for name, label, folder in (("default", "Default VGG", "embedded"),
                                ("convnext", "ConvNeXt", "embedded_convnext"),
                                ("vit", "ViT", "embedded_vit")):
        comp = entry(name).composite
        t0 = time.perf_counter()
        _say(f"{label} on embedded test images (LRP composite {comp}):")
        try:
            lm = load_model(name)
        except ExplanationError as e:
            _fail("demo", str(e))
            status = 1
            continue
        n = 4 if args.quick else 8
        data = embedded("test", n=n, seed=0)
        xs = [np.asarray(im, np.float32) for im in data.images]
        names = [f"test{i}_{data.class_names[int(y)]}" for i, y in enumerate(data.labels)]
        written = _demo_part(lm, names, xs, out / folder,
                             f"{label}: Grad-CAM++ | LRP ({lm.composite}) | hybrid",
                             [data.class_names[int(y)] for y in data.labels], truth=True)
        grids.append(written[-1])
        _say(f"  part time: {time.perf_counter() - t0:.2f} s")
    _say(f"Wrote per-image figures to {out}/{{photos,embedded,embedded_convnext,embedded_vit}}; "
         "grids: "
         + ", ".join(str(g) for g in grids)
         + f" ({time.perf_counter() - start:.0f} s)")
    return status
