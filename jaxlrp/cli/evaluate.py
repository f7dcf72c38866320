"""``jaxlrp evaluate``: score explainers with the metric suite over a dataset.

The driver is :func:`jaxlrp.evaluation.evaluate`; this module holds the command's options,
its data specs (``embedded``, ``photos``, ``tfds:NAME``) and its output. Models are loaded
by the command line's one :func:`jaxlrp.cli.loading.load_model`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from jaxlrp.cli.common import _Formatter
from jaxlrp.cli.loading import load_model
from jaxlrp.errors import ExplanationError
from jaxlrp.evaluation import DEFAULT_EXPLAINERS, evaluate


def add_parser(sub: Any) -> None:
    """Add the ``evaluate`` subcommand to ``sub`` (an argparse subparsers action)."""
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
    add_cli_arguments(p)
    p.set_defaults(func=run_cli)


def _metric_names() -> tuple[str, ...]:
    from jaxlrp.metrics import names

    return names()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``jaxlrp evaluate`` options to ``parser``."""
    parser.add_argument("--model", default="default",
                        help="'default' (the shipped VGG), 'efficientnet-lite0' or a checkpoint "
                             "PATH (jaxlrp.checkpoint)")
    parser.add_argument("--data", default=None,
                        help="'embedded' (test split, with masks), 'photos' (bundled real "
                             "photos, no masks) or 'tfds:NAME'; default: embedded for the "
                             "default model, photos for efficientnet-lite0")
    parser.add_argument("--n", type=int, default=100, help="number of examples")
    parser.add_argument("--explainers", default=",".join(DEFAULT_EXPLAINERS),
                        help="comma-separated explainer names")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated names of registered metrics (default: the "
                             "paper's suite); one of: " + ", ".join(_metric_names()))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target", choices=("label", "predicted"), default="label")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random metrics")
    parser.add_argument("--out", default=None,
                        help="output folder (results.json/.md/.png, per-batch files)")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute batches already finished in --out")
    parser.add_argument("--no-progress", action="store_true")


def photos_batches(n: int | None = None) -> list[tuple[np.ndarray, np.ndarray, None]]:
    """The bundled photos preprocessed for EfficientNet-Lite0, as one batch without masks.

    Labels are the photos' expected top-1 ImageNet classes.
    """
    from jaxlrp import photos
    from jaxlrp.models import preprocess

    items = photos.load()[: n if n else None]
    x = np.concatenate([np.asarray(preprocess(p.image)) for p in items])
    y = np.asarray([p.label for p in items], np.int32)
    return [(x, y, None)]


def load_data(spec: str, n: int | None, model_spec: str) -> Any:
    """The --data option -> a Dataset or a list of batches."""
    from jaxlrp import data as jdata

    if spec == "photos":
        return photos_batches(n)
    if spec == "embedded":
        return jdata.embedded("test", n=n, seed=0)
    if spec.startswith("tfds:"):
        if model_spec in ("efficientnet-lite0", "efficientnet_lite0"):
            from jaxlrp.models import preprocess

            ds = jdata.load(spec, "test", n=n)
            return [(np.asarray(preprocess(ds.images[i:i + 16])), ds.labels[i:i + 16],
                     None) for i in range(0, len(ds), 16)]
        return jdata.load(spec, "test", n=n)
    raise ExplanationError(f"--data: expected 'embedded', 'photos' or 'tfds:NAME', got {spec!r}")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``jaxlrp evaluate`` with parsed ``args``; print the table; return the exit code."""
    try:
        data_spec = args.data or ("photos" if args.model.startswith("efficientnet") else
                                  "embedded")
        if data_spec == "photos":
            print("jaxlrp evaluate: the bundled photos have no masks; Localisation is skipped",
                  file=sys.stderr)
        model = load_model(args.model).model
        data = load_data(data_spec, args.n, args.model)
        explainers = [s.strip() for s in args.explainers.split(",") if s.strip()]
        metrics = None if not args.metrics else [s.strip() for s in args.metrics.split(",")
                                                 if s.strip()]
        results = evaluate(model, data, explainers, metrics, target=args.target,
                           batch_size=args.batch_size, key=args.seed, out_dir=args.out,
                           resume=not args.no_resume, progress=not args.no_progress,
                           meta={"model": args.model, "data": data_spec, "n": args.n})
    except ExplanationError as e:
        print(f"jaxlrp evaluate: error: {e}", file=sys.stderr)
        return 2
    print(results.to_markdown())
    if args.out:
        print(f"wrote {args.out}/results.json, results.md, results.png")
    return 0 if not results.failures else 1


__all__ = ["add_cli_arguments", "add_parser", "load_data", "photos_batches", "run_cli"]
