"""Shared machinery of the shipped reference models (ViT, ConvNeXt): train, load, convert.

Each reference model module defines ``CONFIG`` (constructor kwargs), ``RECIPE``
(training recipe as data) and an NNX class with a Linen twin of the same parameter
layout. :func:`train_reference` is the one training procedure (it calls
:func:`jaxlrp.training.train`); :func:`load_reference` reads a shipped checkpoint
(msgpack via :mod:`jaxlrp.checkpoint`) into an NNX model; :func:`to_linen` gives the
Linen twin bound to the same arrays. The optional convolutional stem of both models
(:func:`check_conv_stem`, :func:`conv_stem`, :func:`conv_stem_linen`,
:func:`apply_conv_stem`) is defined here once.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxlrp.errors import ExplanationError
from jaxlrp.models.vgg import Indexed

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def check_conv_stem(channels: Sequence[int], stride: int, stride_key: str) -> None:
    """``channels`` positive, and ``stride`` (the config's ``stride_key``) a multiple of
    2^len(channels), one stride-2 conv per entry."""
    stem = tuple(channels)
    if any(int(c) <= 0 for c in stem):
        raise ExplanationError(f"stem_channels: expected positive channel counts, got {stem}")
    if stride % 2 ** len(stem):
        raise ExplanationError(
            f"{stride_key}: expected a multiple of 2^{len(stem)} (one stride-2 conv per "
            f"stem_channels entry {stem}), got {stride}"
        )


def conv_stem(in_channels: int, channels: Sequence[int], kernel_init: Any,
              rngs: nnx.Rngs) -> nnx.List:
    """The NNX stem: one 3x3 stride-2 SAME conv per entry of ``channels`` (path ``i``)."""
    chans = (int(in_channels), *(int(c) for c in channels))
    return nnx.List([
        nnx.Conv(chans[i], chans[i + 1], (3, 3), strides=(2, 2), padding="SAME",
                 kernel_init=kernel_init, rngs=rngs)
        for i in range(len(chans) - 1)
    ])


def conv_stem_linen(channels: Sequence[int], kernel_init: Any) -> Indexed:
    """The Linen twin of :func:`conv_stem` (same parameter paths); build it in ``setup``."""
    chans = tuple(int(c) for c in channels)
    return Indexed(lambda i: nn.Conv(chans[i], (3, 3), strides=(2, 2), padding="SAME",
                                     kernel_init=kernel_init), len(chans))


def apply_conv_stem(convs: Any, n: int, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H / 2^n, W / 2^n, c_last): each of the ``n`` convs, then exact GELU."""
    for i in range(n):
        x = jax.nn.gelu(convs[i](x), approximate=False)
    return x


def copy_conv_stem(dst: nnx.Module, src: nnx.Module) -> nnx.Module:
    """Copy the trained ``stem_convs`` of ``src`` into ``dst`` (in place; returned).

    Both models must have the same ``stem_channels`` and input channels; the copies are
    fresh arrays, so training ``dst`` leaves ``src`` unchanged.
    """
    if tuple(dst.stem_channels) != tuple(src.stem_channels) or not dst.stem_channels:
        raise ExplanationError(
            f"src: expected a model with stem_channels={tuple(dst.stem_channels)}, got "
            f"{tuple(src.stem_channels)}"
        )
    for d, s in zip(dst.stem_convs, src.stem_convs, strict=True):
        if d.kernel.shape != s.kernel.shape:
            raise ExplanationError(
                f"src: stem kernel of shape {s.kernel.shape}, expected {d.kernel.shape}"
            )
        d.kernel.set_value(jnp.array(s.kernel.get_value()))
        d.bias.set_value(jnp.array(s.bias.get_value()))
    return dst


def train_reference(
    build: Callable[[int], nnx.Module],
    recipe: dict[str, Any],
    path: str | os.PathLike | None = None,
    *,
    epochs: int | None = None,
    train_examples: int | None = None,
    progress: bool = True,
    start_from: tuple[str | os.PathLike, int] | None = None,
    template: Callable[[], nnx.Module] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[nnx.Module, dict]:
    """Train ``build(seed)`` on the embedded dataset with ``recipe``; save to ``path``.

    ``recipe`` keys: ``train_examples``, ``batch_size``, ``weight_decay``, ``seed``,
    ``augment`` (``"flips+rot90"`` or ``"none"``) and ``phases``: a tuple of
    ``(epochs, peak_lr)``, each phase a warm-up + cosine schedule (AdamW, clipping; see
    :func:`jaxlrp.training.make_optimizer`) shuffled with ``seed + phase - 1``.

    Args:
      build: ``seed -> model`` (a fresh NNX model).
      recipe: the training recipe (see above).
      path: checkpoint path (saved after every epoch and at the end; ``None``: not saved).
      epochs: replace the phases by one phase of ``epochs`` at the first peak rate.
      train_examples: override the recipe's value (quick runs).
      progress: tqdm progress bar.
      start_from: ``(checkpoint, phases_done)`` to resume after a completed phase.
      template: ``() -> model`` to load ``start_from`` into (default ``build(0)``).
      log: optional ``log(line)`` called after every epoch (loss, accuracies, time).
    Returns:
      ``(model, info)``; ``info`` has the recipe, ``test_accuracy`` on the full
      embedded test split (2400 images, seed 0), ``train_seconds`` and the history.
    """
    from jaxlrp import checkpoint
    from jaxlrp.data import embedded
    from jaxlrp.models.default import flip_rotate
    from jaxlrp.training import evaluate_accuracy, train

    recipe = dict(recipe)
    if train_examples is not None:
        recipe["train_examples"] = int(train_examples)
    if epochs is not None:
        recipe["phases"] = ((int(epochs), recipe["phases"][0][1]),)
    augment = {"flips+rot90": flip_rotate, "none": None}[recipe["augment"]]
    data = embedded("train", n=recipe["train_examples"], seed=0)
    test = embedded("test", seed=0)
    monitor = embedded("test", n=512, seed=0)
    history: dict = {}
    start = time.perf_counter()
    if start_from is None:
        model, skip = build(recipe["seed"]), 0
    else:
        model = (template or (lambda: build(0)))()
        model, skip = checkpoint.load(start_from[0], model=model), int(start_from[1])
        history = dict(checkpoint.read_header(start_from[0])["metadata"].get("history", {}))
    for phase, (n_epochs, lr) in enumerate(recipe["phases"], start=1):
        if phase <= skip:
            continue
        done = sum(e for e, _ in recipe["phases"][: phase - 1])

        def save_epoch(epoch: int, snapshot: nnx.Module, hist: dict, *, _phase=phase,
                       _done=done) -> None:
            if log is not None:
                log(f"phase {_phase} epoch {_done + epoch + 1}: loss {hist['loss'][-1]:.4f} "
                    f"train acc {hist['accuracy'][-1]:.4f} "
                    f"eval acc (512) {hist['eval_accuracy'][-1]:.4f} "
                    f"{time.perf_counter() - start:.0f} s")
            if path is not None:
                meta = {"dataset": "embedded", "recipe": recipe, "phase": _phase,
                        "phase_complete": epoch + 1 == recipe["phases"][_phase - 1][0],
                        "epochs_done": _done + epoch + 1,
                        "eval_accuracy_512": hist.get("eval_accuracy", [None])[-1],
                        "elapsed_seconds": round(time.perf_counter() - start, 1)}
                checkpoint.save(path, snapshot, metadata=meta)

        model, hist = train(
            model, data, epochs=n_epochs, batch_size=recipe["batch_size"], lr=lr,
            weight_decay=recipe["weight_decay"], seed=recipe["seed"] + phase - 1,
            augment=augment, progress=progress, eval_dataset=monitor, on_epoch=save_epoch,
        )
        for k, v in hist.items():
            if k != "seconds":
                history.setdefault(k, []).extend(v)
    seconds = time.perf_counter() - start
    info = {
        "dataset": "embedded",
        "recipe": recipe,
        "test_accuracy": evaluate_accuracy(model, test),
        "test_examples": len(test),
        "train_seconds": round(seconds, 1),
        "history": history,
    }
    if path is not None:
        checkpoint.save(path, model, metadata=info)
        _cached.cache_clear()
    return model, info


def load_reference(path: str | os.PathLike, template: Callable[[], nnx.Module],
                   name: str) -> nnx.Module:
    """A fresh NNX model (eval mode) holding the weights of the checkpoint at ``path``.

    The file is read once per process (again when it changes); each call returns a
    new module. ``template`` builds the architecture, ``name`` is used in errors.
    """
    p = Path(path)
    if not p.is_file():
        raise ExplanationError(f"path: no {name} checkpoint file at {str(p)!r}")
    with jax.ensure_compile_time_eval():  # called under jit: cache arrays, never tracers
        graphdef, state = _cached(str(p.resolve()), p.stat().st_mtime_ns, template)
    model = nnx.merge(graphdef, state, copy=True)  # no Variable shared with the cache
    model.eval()
    return model


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, template: Callable[[], nnx.Module]) -> tuple[Any, Any]:
    from jaxlrp import checkpoint

    return nnx.split(checkpoint.load(path, model=template()))


def to_linen(model: nnx.Module, module: Any) -> Any:
    """``jaxlrp.linen(module, variables)`` holding ``model``'s arrays (same layout)."""
    from jaxlrp._tracing import linen
    from jaxlrp.models.vgg import nnx_to_linen_variables

    return linen(module, nnx_to_linen_variables(model))
