"""The ``jaxlrp`` command line: ``info``, ``train``, ``explain``, ``demo`` and ``evaluate``.

Run ``jaxlrp --help`` or ``jaxlrp <command> --help``. Exit codes:

* 0 -- everything succeeded;
* 1 -- the command ran but some inputs failed (``explain``: unreadable or non-image
  files, listed on stderr and in ``<out>/errors.json``; the other files are written);
* 2 -- usage error: a bad option value, an unknown model or method name, a missing
  checkpoint. A one-line message names the option and what was expected.

Matplotlib, the models and the data are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxlrp import explainers as _explainers
from jaxlrp.atomic import atomic_write
from jaxlrp.errors import ExplanationError
from jaxlrp.lrp.composites import PRESETS

PROG = "jaxlrp"

MODEL_NAMES = ("efficientnet-lite0", "default")
"""Built-in models for ``--model`` (besides a checkpoint path)."""


def methods() -> tuple[str, ...]:
    """Explainer names for ``--method``: every registered explainer and CAM method."""
    return _explainers.choices()


def hybrid_cams() -> tuple[str, ...]:
    """CAMs the hybrid can use (``--cam``): every registered CAM method with a map."""
    from jaxlrp.hybrid import cam_methods

    return cam_methods()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
"""File suffixes picked up when a folder is given to ``jaxlrp explain``."""

panel_title = _explainers.title
"""Figure panel title of an explainer, from its registry entry (``gradcam++`` -> Grad-CAM++)."""


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own; shows non-trivial defaults."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Formatter, self)._fill_text(par, width, indent)
                           for par in text.split("\n\n"))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def target_arg(text: str) -> str | int:
    """argparse type: ``predicted`` or a class index >= 0."""
    if text == "predicted":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted' or a class index, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a class index >= 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full ``jaxlrp`` parser tree (``evaluate`` when :mod:`jaxlrp.evaluation` imports)."""
    from jaxlrp.models.default import RECIPE
    parser = _Parser(
        prog=PROG,
        description="Explain image classifiers with Grad-CAM, LRP and their hybrid "
                    "(arXiv 2405.12175), and score the explanations.",
        epilog="Exit codes: 0 success; 1 some inputs failed (reported, the rest written); "
               "2 usage error. Start with 'jaxlrp demo'.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "info", help="versions, devices and the available models, datasets and explainers",
        description="Print the versions of jaxlrp and its main dependencies, the JAX "
                    "devices, and the models, datasets, explainers and LRP composites "
                    "available offline.",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "train", help="train the default VGG on the embedded dataset and save a checkpoint",
        description="Train the default model (a small VGG) on the embedded shapes dataset "
                    "with the recipe of jaxlrp.models.default (AdamW with a cosine "
                    "schedule, flip/rotation augmentation), report the test accuracy and write a "
                    "checkpoint usable as 'jaxlrp explain --model PATH'. Overrides change "
                    "only the values given.",
        formatter_class=_Formatter,
    )
    p.add_argument("--out", default="default_vgg.msgpack", metavar="PATH",
                   help="checkpoint file to write (atomically)")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="train one phase of N epochs instead of the recipe's phases "
                        f"{[e for e, _ in RECIPE['phases']]} (for quick runs)")
    p.add_argument("--train-examples", type=positive_int, default=None, metavar="N",
                   help="first N examples of the embedded train split (default: the "
                        f"recipe's, {RECIPE['train_examples']})")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, shuffling and augmentation (default: 0)")
    p.add_argument("--batch-norm", action="store_true",
                   help="train the BatchNorm variant of the architecture")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "explain", help="explain image files and write heatmap figures and raw maps",
        description="Explain each image with the chosen method and write, into --out, "
                    "<stem>_<method>.png (the map over the image the model saw, with a "
                    "colour bar and the predicted class), <stem>_<method>.npy (the raw "
                    "(H, W) map, float32) and, with --compare, <stem>_compare.png "
                    "(CAM | LRP | hybrid). 'gradcam++' is written as 'gradcam_pp' in file "
                    "names. Files are written atomically as each batch finishes; a rerun "
                    "skips images whose outputs exist (unless --overwrite). Unreadable or "
                    "non-image files are reported on stderr and in <out>/errors.json and "
                    "skipped.\n\nInputs are centre-cropped to a square and resized to the "
                    "model's input size (EfficientNet-Lite0: shorter side 224 then centre "
                    "crop, its own normalisation; the default model: 64x64 in [0, 1]).\n\n"
                    "Exit code: 0 all images explained (or already done); 1 some files "
                    "failed; 2 usage error.",
        formatter_class=_Formatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders (their files with an image suffix)")
    p.add_argument("--model", default="efficientnet-lite0",
                   help="'efficientnet-lite0' (ImageNet, shipped weights), 'default' (the "
                        "VGG trained on the embedded shapes) or PATH to a jaxlrp checkpoint; "
                        "default: efficientnet-lite0")
    p.add_argument("--method", default="hybrid", choices=methods(), help="explainer")
    p.add_argument("--target", type=target_arg, default="predicted", metavar="predicted|N",
                   help="class to explain: the predicted one, or class index N")
    p.add_argument("--out", default="jaxlrp-out", metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per jitted batch")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="also write <stem>_compare.png (CAM | LRP | hybrid); default: on "
                        "for --method hybrid, off otherwise")
    p.add_argument("--layer", default=None,
                   help="CAM layer path (see 'jaxlrp.layers(model, x)'); default: the last "
                        "spatial layer with parameters")
    p.add_argument("--composite", default=None, choices=sorted(PRESETS),
                   help="LRP composite preset for lrp/hybrid (jaxlrp.lrp.composites); "
                        "default: the paper's (z+ on convolutions, epsilon=0 on dense layers)")
    p.add_argument("--cam", default=None, choices=hybrid_cams(),
                   help="the hybrid's CAM (default gradcam++, the paper's)")
    p.add_argument("--threshold", type=unit_float, default=None,
                   help="the hybrid's CAM denoising threshold (default 0.2)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute images whose outputs already exist")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "demo", help="explain bundled photos and embedded images; no download",
        description="Explain the four bundled photos with EfficientNet-Lite0 and eight "
                    "embedded test images with the default model (Grad-CAM++ | LRP | "
                    "hybrid), write one comparison figure per image (<out>/photos/, "
                    "<out>/embedded/) and one grid per model (<out>/photos_grid.png, "
                    "<out>/embedded_grid.png), and print the predicted labels. LRP uses "
                    "the paper's composite on the default model and epsilon_plus_flat on "
                    "EfficientNet-Lite0 (whose inputs are signed, where z+ at the input "
                    "layer is ill-suited). Everything is bundled; nothing is downloaded.",
        formatter_class=_Formatter,
    )
    p.add_argument("--out", default="jaxlrp-demo", metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="fewer images (2 photos, 4 embedded images), for smoke tests")
    p.add_argument("--no-progress", action="store_true", help="hide progress messages")
    p.set_defaults(func=cmd_demo)

    try:
        from jaxlrp import evaluation
    except ImportError:  # the evaluation driver is optional
        evaluation = None
    if evaluation is not None:
        p = sub.add_parser(
            "evaluate", help="score explainers with the metric suite over a dataset",
            description="Evaluate explainers with the paper's five-category metric suite "
                        "(Faithfulness, Robustness, Complexity, Localisation, "
                        "Randomisation) and print mean +- standard error per explainer "
                        "and metric; with --out, write results.json/.md/.png and resume "
                        "interrupted runs. Exit code: 0 success, 1 some batches failed, "
                        "2 usage error.",
            formatter_class=_Formatter,
        )
        evaluation.add_cli_arguments(p)
        p.set_defaults(func=evaluation.run_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except ExplanationError as e:
        _fail(args.command, str(e))
        return 2
    except OSError as e:  # an unwritable --out, a full disk: no traceback, exit 1
        _fail(args.command, f"{type(e).__name__}: {e}")
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message: str) -> None:
    print(f"{PROG} {command}: error: {' '.join(message.split())}", file=sys.stderr)


def _warn(message: str) -> None:
    """A line on stderr that does not break a running tqdm bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass
class LoadedModel:
    """A model with what the CLI needs around it.

    ``prepare(uint8 (H, W, 3)) -> (h, w, c)`` float32 model input; ``display(input) ->
    (h, w, 3)`` float in [0, 1], the image the model saw.
    """

    name: str
    model: Any
    class_names: list[str]
    prepare: Callable[[Any], Any]
    display: Callable[[Any], Any]


def _square_resize(image: Any, size: tuple[int, int], channels: int) -> Any:
    """Centre-crop uint8 (H, W, 3) to a square, resize to ``size``; float32 in [0, 1]."""
    import numpy as np

    from jaxlrp.data.images import resize_uint8

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(image[top:top + side, left:left + side, :3])
    out = resize_uint8(crop, size).astype(np.float32) / 255.0
    if channels == 1:
        out = out.mean(axis=-1, keepdims=True)
    elif channels != 3:
        raise ExplanationError(f"--model: models with {channels} input channels are not "
                               "supported by the command line; expected 1 or 3")
    return out


def _vgg_like(name: str, model: Any, header: dict | None) -> LoadedModel:
    import numpy as np

    from jaxlrp.data import CLASS_NAMES

    config = model.config() if hasattr(model, "config") else {}
    size = config.get("input_size", 64)
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = int(config.get("in_channels", 3))
    k = int(config.get("num_classes", len(CLASS_NAMES)))
    meta = (header or {}).get("metadata", {}) or {}
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) == k):
        embedded = header is None or meta.get("dataset") == "embedded"
        names = list(CLASS_NAMES) if embedded and k == len(CLASS_NAMES) else [
            f"class {i}" for i in range(k)]

    def display(x):
        x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x

    return LoadedModel(name, model, [str(n) for n in names],
                       lambda img: _square_resize(img, size, channels), display)


def load_model(spec: str) -> LoadedModel:
    """``--model`` -> :class:`LoadedModel`: a built-in name or a checkpoint path."""
    import numpy as np

    if spec in ("efficientnet-lite0", "efficientnet_lite0"):
        from jaxlrp.models import efficientnet as eff

        def prepare(img):
            return np.asarray(eff.preprocess(img))[0]

        def display(x):
            x = np.asarray(x, np.float32) * np.asarray(eff.STD, np.float32)
            return np.clip(x + np.asarray(eff.MEAN, np.float32), 0.0, 1.0)

        return LoadedModel("efficientnet-lite0", eff.efficientnet_lite0(),
                           eff.imagenet_classes(), prepare, display)
    if spec == "default":
        from jaxlrp.models import load_default_model

        return _vgg_like("default", load_default_model(), None)
    path = Path(spec)
    if not path.is_file():
        raise ExplanationError(
            f"--model: expected {' or '.join(repr(n) for n in MODEL_NAMES)} or a checkpoint "
            f"file, got {spec!r}" + (" (a folder)" if path.is_dir() else " (no such file)")
        )
    from jaxlrp import checkpoint

    header = checkpoint.read_header(path)
    model = checkpoint.load(path)
    return _vgg_like(path.name, model, header)


# ----------------------------------------------------------------------------- explain core


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to compute per batch: the method's map and optionally the comparison panels."""

    method: str
    target: str | int
    compare: bool
    options: dict  # keyword options of jaxlrp.explainers.get(method, ...)
    hybrid_options: dict  # options of the hybrid used for the comparison panels

    @property
    def cam_name(self) -> str:
        return self.hybrid_options.get("cam", "gradcam++")

    def panels(self) -> list[str]:
        """Comparison panel keys, in order."""
        return [self.cam_name, "lrp", "hybrid"]


def make_plan(args: argparse.Namespace) -> Plan:
    """Check which options apply to ``--method`` and bind them."""
    method = _explainers.canonical(args.method)
    compare = (method == "hybrid") if args.compare is None else bool(args.compare)
    applies = {
        "layer": method != "lrp",
        "composite": method in ("lrp", "hybrid"),
        "cam": method == "hybrid",
        "threshold": method == "hybrid",
    }
    options = {}
    for opt, ok in applies.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if not ok and not compare:
            raise ExplanationError(
                f"--{opt}: does not apply to --method {method}; it applies to "
                + {"layer": "the CAMs and hybrid", "composite": "lrp and hybrid",
                   "cam": "hybrid", "threshold": "hybrid"}[opt]
            )
        if ok:
            options[opt] = value
    hybrid_options = {k: getattr(args, k) for k in ("layer", "composite", "threshold")
                      if getattr(args, k) is not None}
    cam = args.cam or (method if method in hybrid_cams() else None)
    if cam is not None:
        hybrid_options["cam"] = _explainers.canonical(cam)
    return Plan(method, args.target, compare, options, hybrid_options)


def make_runner(plan: Plan) -> Callable[[Any, Any], tuple[Any, dict]]:
    """A jitted ``run(model, x) -> (logits (B, K), {name: (B, H, W) map})``.

    The names are ``plan.method`` and, with ``plan.compare``, the comparison panels
    (the CAM, ``lrp`` and ``hybrid``), all from one hybrid pass where possible. One
    compilation per model structure and batch shape.
    """
    import jax
    import jax.numpy as jnp

    from jaxlrp import explainers
    from jaxlrp.hybrid import hybrid
    from jaxlrp.tracing import as_adapter

    explain = explainers.get(plan.method, **plan.options)

    def run(model: Any, x: Any) -> tuple[Any, dict]:
        adapter = as_adapter(model)
        logits = adapter.apply(adapter.params, x)
        maps = {}
        if plan.compare:
            parts = hybrid(model, x, plan.target, return_parts=True, **plan.hybrid_options)
            rel = parts.relevance_map
            scale = jnp.max(jnp.abs(rel), axis=(1, 2), keepdims=True)
            rel = jnp.where(scale > 0, rel / jnp.where(scale > 0, scale, 1.0), rel)
            maps = {plan.cam_name: parts.cam, "lrp": rel, "hybrid": parts.hybrid}
        if plan.method not in maps:
            maps[plan.method] = explain(model, x, plan.target)
        return logits, maps

    return jax.jit(run)


def file_token(method: str) -> str:
    """``method`` as used in output file names (``gradcam++`` -> ``gradcam_pp``)."""
    return method.replace("++", "_pp")




def save_npy(path: Path, array: Any) -> None:
    """Write ``array`` as .npy atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    atomic_write(path, buf.getvalue())


def _title(method: str, target: str | int, classes: Sequence[str]) -> str:
    name = panel_title(method)
    if target == "predicted":
        return name
    return f"{name} for class {target} ({classes[int(target)]})"


# ----------------------------------------------------------------------------- explain


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Files as given; folders replaced by their image files (sorted, not recursive)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir()
                              if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems: the file stem, with ``-2``, ``-3``... for repeats (in input order)."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem or p.name or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _outputs(out: Path, stem: str, plan: Plan) -> list[Path]:
    tok = file_token(plan.method)
    files = [out / f"{stem}_{tok}.npy", out / f"{stem}_{tok}.png"]
    if plan.compare:
        files.append(out / f"{stem}_compare.png")
    return files


def _batches(items: list, prepare: Callable, size: int,
             failed: list[dict]) -> Iterator[list[tuple[Any, Any, Any]]]:
    """Read and prepare images, yielding full batches of ``(item, raw, x)``; record failures."""
    from jaxlrp.data import read_image

    batch: list[tuple[Any, Any, Any]] = []
    for item in items:
        path = item[0]
        try:
            raw = read_image(path)
            x = prepare(raw)
        except ExplanationError as e:
            msg = " ".join(str(e).split())
            failed.append({"path": str(path), "error": msg})
            _warn(f"{PROG} explain: skipped {path}: {msg}")
            yield [(item, None, None)]  # counts towards progress
            continue
        batch.append((item, raw, x))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_batch(runner: Callable, lm: LoadedModel, xs: list, size: int) -> tuple[Any, dict]:
    """Run ``runner`` on ``xs`` padded to ``size`` (one compiled shape); numpy outputs."""
    import numpy as np

    x = np.stack(xs)
    n = len(xs)
    if n < size:
        x = np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
    logits, maps = runner(lm.model, x)
    return np.asarray(logits)[:n], {k: np.asarray(v)[:n] for k, v in maps.items()}


def write_outputs(out: Path, stem: str, plan: Plan, lm: LoadedModel, x: Any, pred: int,
                  maps: dict) -> None:
    """The .npy map, the overlay PNG and (with compare) the comparison PNG of one image."""
    import numpy as np

    from jaxlrp import viz

    image = lm.display(x)
    cls = lm.class_names[pred]
    tok = file_token(plan.method)
    save_npy(out / f"{stem}_{tok}.npy", maps[plan.method].astype(np.float32))
    if plan.compare:
        panels = {panel_title(k): maps[k] for k in plan.panels()}
        title = stem if plan.target == "predicted" else (
            f"{stem}, target class {plan.target} ({lm.class_names[int(plan.target)]})")
        viz.save(viz.compare(image, panels, class_name=cls, title=title),
                 out / f"{stem}_compare.png")
    title = _title(plan.method, plan.target, lm.class_names)
    viz.save(viz.overlay(image, maps[plan.method], title=title, class_name=cls,
                         signed=True if plan.method == "lrp" else None),
             out / f"{stem}_{tok}.png")


def cmd_explain(args: argparse.Namespace) -> int:
    """``jaxlrp explain``: see the subcommand's help."""
    plan = make_plan(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExplanationError(f"--out: expected a folder, got the file {str(out)!r}")
    paths = expand_inputs(args.images)
    if not paths:
        raise ExplanationError("IMAGE: the given folders hold no image files "
                               f"(suffixes {', '.join(IMAGE_SUFFIXES)})")
    items = list(zip(paths, unique_stems(paths), strict=True))
    todo = [it for it in items
            if args.overwrite or not all(f.exists() for f in _outputs(out, it[1], plan))]
    done_before = len(items) - len(todo)
    if out.is_dir():  # temporaries left by an interrupted run (atomic writes never finished)
        for tmp in out.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    failed: list[dict] = []
    explained = 0
    if todo:
        lm = load_model(args.model)
        if isinstance(plan.target, int) and plan.target >= len(lm.class_names):
            raise ExplanationError(
                f"--target: class {plan.target} is out of range; {lm.name} has "
                f"{len(lm.class_names)} classes (0..{len(lm.class_names) - 1})"
            )
        out.mkdir(parents=True, exist_ok=True)
        runner = make_runner(plan)
        size = min(args.batch_size, len(todo))
        bar = _bar(len(todo), "explain", "image", not args.no_progress)
        try:
            for batch in _batches(todo, lm.prepare, size, failed):
                good = [b for b in batch if b[2] is not None]
                if good:
                    logits, maps = run_batch(runner, lm, [b[2] for b in good], size)
                    preds = logits.argmax(axis=-1)
                    for i, ((_, stem), _, x) in enumerate(good):
                        write_outputs(out, stem, plan, lm, x, int(preds[i]),
                                      {k: v[i] for k, v in maps.items()})
                        explained += 1
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
    if todo or failed:
        summary = {"model": args.model, "method": plan.method, "target": plan.target,
                   "explained": explained, "already_done": done_before, "failed": failed}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "errors.json", json.dumps(summary, indent=2).encode())
    _say(f"{PROG} explain: {explained} explained, {done_before} already done, "
         f"{len(failed)} failed; outputs in {out}")
    if failed:
        print(f"{PROG} explain: {len(failed)} file(s) failed, listed in {out / 'errors.json'}",
              file=sys.stderr)
    return 1 if failed else 0


def _bar(total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


# ----------------------------------------------------------------------------- demo


DEMO_COMPOSITES = {"efficientnet-lite0": "epsilon_plus_flat", "default": None}
"""LRP composite per demo model. The paper's composite (z+ on every convolution) suits
inputs >= 0, as the default model's [0, 1] images; EfficientNet-Lite0's inputs lie in
[-1, 1], where z+ at the input layer gives sparse, sign-alternating speckle, so its demo
uses Flat at the input layer, z+ on the other convolutions and epsilon on the dense layer."""


def _demo_part(lm: LoadedModel, names: list[str], xs: list, out: Path, title: str,
               expected: list[str], composite: str | None, truth: bool) -> list[Path]:
    """Explain one batch (Grad-CAM++ | LRP | hybrid), write per-image and grid figures.

    ``expected``: per image, the reference label (``truth``: the ground truth, shown in
    the grid; else the reference PyTorch model's prediction, only printed).
    """
    import numpy as np

    from jaxlrp import viz

    options = {} if composite is None else {"composite": composite}
    plan = Plan("hybrid", "predicted", True, dict(options), dict(options))
    runner = make_runner(plan)
    logits, maps = run_batch(runner, lm, xs, len(xs))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
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

    comp = DEMO_COMPOSITES["efficientnet-lite0"]
    _say(f"EfficientNet-Lite0 (ImageNet) on the bundled photos (LRP composite {comp}):")
    items = photos.load(["chelsea", "coffee"] if args.quick else None)
    lm = load_model("efficientnet-lite0")
    xs = [lm.prepare(p.image) for p in items]
    written = _demo_part(lm, [p.name for p in items], xs, out / "photos",
                         f"EfficientNet-Lite0: Grad-CAM++ | LRP ({comp}) | hybrid",
                         [p.label_name for p in items], comp, truth=False)
    grids.append(written[-1])

    _say("Default model (VGG) on embedded test images (LRP composite paper):")
    try:
        lm = load_model("default")
    except ExplanationError as e:
        _fail("demo", str(e))
        status = 1
    else:
        n = 4 if args.quick else 8
        data = embedded("test", n=n, seed=0)
        xs = [np.asarray(im, np.float32) for im in data.images]
        names = [f"test{i}_{data.class_names[int(y)]}" for i, y in enumerate(data.labels)]
        written = _demo_part(lm, names, xs, out / "embedded",
                             "Default VGG: Grad-CAM++ | LRP (paper) | hybrid",
                             [data.class_names[int(y)] for y in data.labels],
                             DEMO_COMPOSITES["default"], truth=True)
        grids.append(written[-1])
    _say(f"Wrote per-image figures to {out / 'photos'} and {out / 'embedded'}; grids: "
         + ", ".join(str(g) for g in grids)
         + f" ({time.perf_counter() - start:.0f} s)")
    return status


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """``jaxlrp train``: see the subcommand's help."""
    from jaxlrp.models.default import RECIPE, train_default

    out = Path(args.out)
    if out.is_dir():
        raise ExplanationError(f"--out: expected a file path, got the folder {str(out)!r}")
    epochs = args.epochs or sum(e for e, _ in RECIPE["phases"])
    _say(f"Training the default VGG on the embedded dataset for {epochs} epochs...")
    _, info = train_default(out, epochs=args.epochs, train_examples=args.train_examples,
                            seed=args.seed, batch_norm=args.batch_norm,
                            progress=not args.no_progress)
    _say(f"test accuracy {info['test_accuracy']:.4f} on {info['test_examples']} embedded "
         f"test images; trained in {info['train_seconds']:.0f} s")
    _say(f"wrote {out}; use it with: {PROG} explain --model {out} IMAGE...")
    return 0


# ----------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    """``jaxlrp info``: versions, devices, available components."""
    from importlib import metadata

    import jax

    from jaxlrp import photos
    from jaxlrp.models import default as default_mod
    from jaxlrp.models import efficientnet as eff

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    _say("versions:")
    _say(f"  python {sys.version.split()[0]}")
    for pkg in ("jaxlrp", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib",
                "tensorflow-datasets"):
        _say(f"  {pkg} {version(pkg)}")
    _say(f"devices: {', '.join(str(d) for d in jax.devices())} "
         f"(default backend: {jax.default_backend()})")
    _say("models (--model):")
    _say(f"  efficientnet-lite0  ImageNet, 224x224, weights "
         f"{'shipped' if eff.weights_path().is_file() else 'MISSING'}")
    shipped = default_mod.DEFAULT_PATH.is_file()
    _say(f"  default             VGG on the embedded shapes, 64x64, checkpoint "
         f"{'shipped' if shipped else 'missing (run: jaxlrp train)'}")
    _say("  PATH                a jaxlrp checkpoint (VGG or ResNet), e.g. from 'jaxlrp train'")
    _say("datasets: embedded (8 shape classes, 64x64, masks; no download), tfds:NAME "
         "(TensorFlow Datasets, needs the data locally)")
    _say(f"bundled photos: {', '.join(photos.names())}")
    _say(f"explainers (--method): {', '.join(_explainers.names())}")
    _say(f"LRP composites (--composite): {', '.join(sorted(PRESETS))} (default: paper)")
    return 0


__all__ = ["LoadedModel", "Plan", "build_parser", "load_model", "main", "make_plan",
           "make_runner"]
