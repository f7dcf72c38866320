"""The shipped default model: a small VGG trained on the embedded shapes dataset.

* :func:`default_model` / :func:`load_default_model` load the checkpoint shipped at
  ``jaxlrp/assets/default_vgg.msgpack`` (cached; each call returns a fresh module).
* :func:`train_default` is the exact recipe that produced it (``jaxlrp train`` calls it).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxlrp import checkpoint
from jaxlrp.errors import ExplanationError
from jaxlrp.models.vgg import VGG

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "default_vgg.msgpack"

# The architecture of the shipped model (constructor kwargs of VGG).
CONFIG: dict[str, Any] = {
    "num_classes": 8,
    "widths": (16, 32, 64, 128),  # 4 stages: the last conv sees 38 px, > the 30 px objects
    "convs_per_block": 1,
    "batch_norm": False,
    "dense": (64,),
    "in_channels": 3,
    "input_size": 64,
}

# The training recipe of the shipped model. Adam peak rates of 1e-3 and above collapsed
# the wide first Dense layer (all ReLUs dead, constant prediction) in trial runs.
RECIPE: dict[str, Any] = {
    "train_examples": 12000,  # embedded("train", seed=0), all of it
    "batch_size": 64,
    "weight_decay": 1e-4,
    "seed": 0,  # model init; phase p shuffles and augments with seed + p
    "augment": "flips+rot90",
    # (epochs, peak lr) of each phase: warm-up + cosine decay to 0 (AdamW, global-norm
    # clipping), each phase a warm restart at a lower peak rate
    "phases": ((14, 2e-3), (14, 1e-3), (6, 5e-4)),
}


def flip_rotate(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Random horizontal flip and rotation by a multiple of 90 degrees, per image.

    All eight embedded shape classes keep their label under these symmetries.
    images: (B, H, W, C) with H == W.
    """
    out = np.array(images, copy=True)
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    turns = rng.integers(0, 4, len(out))
    for k in (1, 2, 3):
        sel = turns == k
        out[sel] = np.rot90(out[sel], k, axes=(1, 2))
    return out


def train_default(
    path: str | os.PathLike | None = None,
    *,
    epochs: int | None = None,
    train_examples: int | None = None,
    seed: int | None = None,
    batch_norm: bool | None = None,
    progress: bool = True,
    start_from: tuple[str | os.PathLike, int] | None = None,
) -> tuple[VGG, dict]:
    """Train the default VGG on the embedded dataset with :data:`RECIPE`.

    Args:
      path: where to save the checkpoint (``None``: do not save).
      epochs: replace the recipe's phases by one phase of ``epochs`` at the first
        phase's peak rate (for quick runs).
      train_examples, seed: override the recipe's values.
      batch_norm: override the architecture's BatchNorm choice (None keeps :data:`CONFIG`).
      progress: show a progress bar.
      start_from: ``(checkpoint, phases_done)``: a checkpoint saved at the end of phase
        ``phases_done`` of this recipe; those phases are skipped (to resume an
        interrupted run; the result is the same).
    Returns:
      ``(model, info)`` where ``info`` records the recipe, the test accuracy on the
      full embedded test split (seed 0), the training wall time and the history.
    """
    from jaxlrp.data import embedded
    from jaxlrp.training import evaluate_accuracy, train

    recipe = dict(RECIPE)
    for key, value in (("train_examples", train_examples), ("seed", seed)):
        if value is not None:
            recipe[key] = value
    if epochs is not None:
        recipe["phases"] = ((int(epochs), recipe["phases"][0][1]),)
    config = dict(CONFIG)
    if batch_norm is not None:
        config["batch_norm"] = bool(batch_norm)
    data = embedded("train", n=recipe["train_examples"], seed=0)
    test = embedded("test", seed=0)
    start = time.perf_counter()
    history: dict = {}

    def run_phase(model: VGG, phase: int, epochs: int, lr: float) -> VGG:
        done = sum(e for e, _ in recipe["phases"][: phase - 1])

        def save_epoch(epoch: int, snapshot: VGG, hist: dict) -> None:
            # a checkpoint after every epoch, so an interrupted run keeps its progress
            if path is not None:
                meta = {"dataset": "embedded", "recipe": recipe, "phase": phase,
                        "epochs_done": done + epoch + 1,
                        "eval_accuracy_512": hist.get("eval_accuracy", [None])[-1]}
                checkpoint.save(path, snapshot, metadata=meta)

        model, hist = train(
            model, data, epochs=epochs, batch_size=recipe["batch_size"], lr=lr,
            weight_decay=recipe["weight_decay"], seed=recipe["seed"] + phase - 1,
            augment=flip_rotate, progress=progress,
            eval_dataset=embedded("test", n=512, seed=0), on_epoch=save_epoch,
        )
        for k, v in hist.items():
            if k != "seconds":
                history.setdefault(k, []).extend(v)
        return model

    if start_from is None:
        model, skip = VGG(**config, rngs=nnx.Rngs(recipe["seed"])), 0
    else:
        model, skip = checkpoint.load(start_from[0]), int(start_from[1])
    for phase, (epochs, lr) in enumerate(recipe["phases"], start=1):
        if phase > skip:
            model = run_phase(model, phase, epochs, lr)
    seconds = time.perf_counter() - start
    accuracy = evaluate_accuracy(model, test)
    info = {
        "dataset": "embedded",
        "recipe": recipe,
        "test_accuracy": accuracy,
        "test_examples": len(test),
        "train_seconds": round(seconds, 1),
        "history": history,
    }
    if path is not None:
        checkpoint.save(path, model, metadata=info)
        _cached.cache_clear()
    return model, info


def load_default_model(path: str | os.PathLike | None = None) -> VGG:
    """Load the default VGG (eval mode) from ``path`` or the shipped checkpoint.

    The file is read once per process (and again when it changes); each call returns
    a new module, so changing one does not affect the others.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise ExplanationError(
            f"path: no default-model checkpoint at {str(p)!r}; create it with `jaxlrp train`"
            if path is None else f"path: no checkpoint file at {str(p)!r}"
        )
    graphdef, state = _cached(str(p.resolve()), p.stat().st_mtime_ns)
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def default_model() -> VGG:
    """The shipped trained VGG for the embedded dataset: (B, 64, 64, 3) in [0, 1] -> (B, 8)."""
    return load_default_model()


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int) -> tuple[Any, Any]:
    model = checkpoint.load(path)
    if not isinstance(model, VGG):
        raise ExplanationError(f"path: {path} does not hold a VGG, got {type(model).__name__}")
    return nnx.split(model)
