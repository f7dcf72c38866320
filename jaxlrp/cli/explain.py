"""``jaxlrp explain``: explain image files, write heatmap figures and raw maps."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxlrp import explainers as _explainers
from jaxlrp._atomic import atomic_write
from jaxlrp._lrp.composites import PRESETS
from jaxlrp.cli.common import (
    IMAGE_SUFFIXES,
    PROG,
    _bar,
    _Formatter,
    _say,
    _warn,
    hybrid_cams,
    methods,
    panel_title,
    positive_int,
    target_arg,
    unit_float,
)
from jaxlrp.cli.loading import LoadedModel, load_model
from jaxlrp.errors import ExplanationError


def add_parser(sub: Any) -> None:
    """Add the ``explain`` subcommand to ``sub`` (an argparse subparsers action)."""
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
                    "Prints one line per explained image: the file, the predicted label and "
                    "its probability, and the outputs written (--json: one JSON object per "
                    "line instead, with the keys file, class, label, probability, outputs; "
                    "the summary then goes to stderr).\n\n"
                    "LRP (lrp, hybrid and the comparison panels) uses the model's default "
                    "composite unless --composite is given: epsilon_plus_flat for "
                    "efficientnet-lite0 (inputs in [-1, 1]), paper for the default model "
                    "and for checkpoints (jaxlrp.models.registry).\n\n"
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
                   help="LRP composite preset for lrp/hybrid (jaxlrp.composites); "
                        "default: the model's (epsilon_plus_flat for efficientnet-lite0, "
                        "paper for the default model and checkpoints)")
    p.add_argument("--cam", default=None, choices=hybrid_cams(),
                   help="the hybrid's CAM (default gradcam++, the paper's)")
    p.add_argument("--threshold", type=unit_float, default=None,
                   help="the hybrid's CAM denoising threshold (default 0.2)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute images whose outputs already exist")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per explained image instead of a text line")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_explain)


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

    def with_default_composite(self, composite: str) -> Plan:
        """This plan with ``composite`` where LRP is used and no composite was given."""
        options = dict(self.options)
        if self.method in ("lrp", "hybrid"):
            options.setdefault("composite", composite)
        hybrid_options = dict(self.hybrid_options)
        hybrid_options.setdefault("composite", composite)
        return dataclasses.replace(self, options=options, hybrid_options=hybrid_options)


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
    (the CAM, ``lrp`` and ``hybrid``), all from one hybrid pass where possible
    (:func:`jaxlrp.panels.explain_panels`). One compilation per model structure and batch
    shape; with the compilation cache on, the traced program is kept on disk too
    (:mod:`jaxlrp.cli.saved_programs`), so that a later run neither traces nor compiles.
    """
    from jaxlrp import explainers
    from jaxlrp._tracing import as_adapter
    from jaxlrp.cli.saved_programs import SavedRunner
    from jaxlrp.panels import explain_panels

    explain = explainers.get(plan.method, **plan.options)

    def run(model: Any, x: Any) -> tuple[Any, dict]:
        maps = {}
        if plan.compare:
            panels = explain_panels(model, x, plan.target, **plan.hybrid_options)
            logits, maps = panels.logits, panels.maps()
        else:
            adapter = as_adapter(model)
            logits = adapter.apply(adapter.params, x)
        if plan.method not in maps:
            maps[plan.method] = explain(model, x, plan.target)
        return logits, maps

    return SavedRunner(run, plan)


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


def softmax(logits: Any) -> Any:
    """Row-wise softmax of (B, K) numpy logits, in float64."""
    import numpy as np

    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def image_line(path: Path, pred: int, label: str, probability: float, outputs: list[Path],
               *, as_json: bool = False) -> str:
    """The line printed for one explained image (text, or one JSON object)."""
    if as_json:
        return json.dumps({"file": str(path), "class": pred, "label": label,
                           "probability": round(probability, 6),
                           "outputs": [str(f) for f in outputs]})
    return (f"{path}: {label} (class {pred}, p={probability:.3f}) -> "
            + ", ".join(str(f) for f in outputs))


def _print(line: str, bar: Any) -> None:
    """Print ``line`` on stdout without breaking a running progress bar."""
    if bar is None:
        print(line, flush=True)
    else:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()


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
        plan = plan.with_default_composite(lm.composite)
        runner = make_runner(plan)
        size = min(args.batch_size, len(todo))
        bar = _bar(len(todo), "explain", "image", not args.no_progress)
        try:
            for batch in _batches(todo, lm.prepare, size, failed):
                good = [b for b in batch if b[2] is not None]
                if good:
                    logits, maps = run_batch(runner, lm, [b[2] for b in good], size)
                    preds = logits.argmax(axis=-1)
                    probs = softmax(logits)
                    for i, ((path, stem), _, x) in enumerate(good):
                        pred = int(preds[i])
                        write_outputs(out, stem, plan, lm, x, pred,
                                      {k: v[i] for k, v in maps.items()})
                        explained += 1
                        _print(image_line(path, pred, lm.class_names[pred],
                                          float(probs[i, pred]), _outputs(out, stem, plan),
                                          as_json=args.json), bar)
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
    summary_line = (f"{PROG} explain: {explained} explained, {done_before} already done, "
                    f"{len(failed)} failed; outputs in {out}")
    if args.json:  # stdout holds only the per-image JSON lines
        print(summary_line, file=sys.stderr, flush=True)
    else:
        _say(summary_line)
    if failed:
        print(f"{PROG} explain: {len(failed)} file(s) failed, listed in {out / 'errors.json'}",
              file=sys.stderr)
    return 1 if failed else 0
