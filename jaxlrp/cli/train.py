"""``jaxlrp train``: train the default VGG on the embedded dataset, save a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxlrp.cli.common import PROG, _Formatter, _say, positive_int
from jaxlrp.errors import ExplanationError


def add_parser(sub: Any) -> None:
    """Add the ``train`` subcommand to ``sub`` (an argparse subparsers action)."""
    from jaxlrp.models.default import RECIPE

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
