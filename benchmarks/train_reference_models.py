"""Train the shipped reference ViT and ConvNeXt and record their figures.

    python benchmarks/train_reference_models.py vit          # train, save, record
    python benchmarks/train_reference_models.py convnext
    python benchmarks/train_reference_models.py vit --resume 1   # after phase 1 completed
    python benchmarks/train_reference_models.py vit --evaluate   # re-measure the shipped file

Training follows ``RECIPE`` of :mod:`jaxlrp.models.vit` / :mod:`jaxlrp.models.convnext`
and writes ``jaxlrp/assets/reference_{model}.msgpack`` (a checkpoint after every epoch,
so an interrupted run keeps its progress). The entry for the model in
``benchmarks/results/reference_models.json`` gets: test accuracy on the full embedded
test split (2400 images) measured on the saved file, in NNX and in Linen; training wall
time; file size; parameter count; the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from jaxlrp.data import embedded
from jaxlrp.models import convnext, vit
from jaxlrp.training import evaluate_accuracy

RESULTS = Path(__file__).resolve().parent / "results" / "reference_models.json"
MODELS = {
    "vit": (vit, vit.train_vit, vit.vit_model, vit.vit_linen),
    "convnext": (convnext, convnext.train_convnext, convnext.convnext_model,
                 convnext.convnext_linen),
}


def measure(name: str) -> dict:
    """Figures of the saved checkpoint of ``name`` (accuracy in NNX and Linen, size)."""
    module, _, load, load_linen = MODELS[name]
    path = module.PATH
    test = embedded("test", seed=0)
    model = load()
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(
        load_linen().variables)))
    return {
        "file": str(path.relative_to(path.parents[2])),
        "file_bytes": path.stat().st_size,
        "file_mb": round(path.stat().st_size / 2**20, 3),
        "parameters": n_params,
        "config": model.config(),
        "test_examples": len(test),
        "test_accuracy_nnx": evaluate_accuracy(model, test),
        "test_accuracy_linen": evaluate_accuracy(load_linen(), test),
    }


def record(name: str, entry: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[name] = {**data.get(name, {}), **entry}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--resume", type=int, default=None,
                    help="resume from the saved checkpoint after this many completed phases")
    ap.add_argument("--evaluate", action="store_true",
                    help="only re-measure the saved checkpoint")
    args = ap.parse_args()
    module, train_fn, _, _ = MODELS[args.model]
    if not args.evaluate:
        start_from = None if args.resume is None else (module.PATH, args.resume)
        t0 = time.perf_counter()
        _, info = train_fn(module.PATH, progress=False, start_from=start_from,
                           log=lambda line: print(line, flush=True))
        record(args.model, {
            "recipe": info["recipe"],
            "train_seconds": info["train_seconds"],
            "train_minutes": round(info["train_seconds"] / 60, 1),
            "wall_seconds_incl_data": round(time.perf_counter() - t0, 1),
            "resumed_after_phase": args.resume,
            "eval_accuracy_512_per_epoch": info["history"].get("eval_accuracy"),
            "train_loss_per_epoch": info["history"].get("loss"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)",
            "jax": jax.__version__,
        })
    record(args.model, measure(args.model))
    print(json.dumps(json.loads(RESULTS.read_text())[args.model], indent=2)[:2000])


if __name__ == "__main__":
    main()
