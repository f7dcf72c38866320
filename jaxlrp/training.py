"""Train and evaluate NNX image classifiers (cross-entropy, optax, one jitted step).

:func:`train` works for any ``flax.nnx`` classifier ``(B, H, W, C) -> (B, K)``;
BatchNorm layers run in training mode during training (batch statistics, running
averages updated) and the model is returned in eval mode.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlrp._tracing import as_adapter
from jaxlrp._validation import check_positive_int
from jaxlrp.errors import ExplanationError

Augment = Callable[[np.random.Generator, np.ndarray], np.ndarray]
ExtraLoss = Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], Any]
"""``extra_loss(model, x, y, key) -> term`` or ``(term, {name: scalar})``: a scalar added to
the cross-entropy inside the jitted step (``model`` is the model being trained, ``x``
(B, H, W, C), ``y`` (B,) labels, ``key`` a fresh ``jax.random`` key per step); the named
scalars are logged per epoch (their mean over the epoch's steps) in the history."""


def make_optimizer(lr: float, total_steps: int, *, weight_decay: float = 1e-4,
                   warmup: float = 0.05, clip: float = 1.0) -> optax.GradientTransformation:
    """Global-norm clipping -> AdamW with linear warm-up and cosine decay to 0."""
    warmup_steps = max(1, int(warmup * total_steps))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1), end_value=0.0
    )
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(schedule, weight_decay=weight_decay))


def train(
    model: nnx.Module,
    dataset: Any,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment: Augment | None = None,
    eval_dataset: Any = None,
    progress: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    on_epoch: Callable[[int, nnx.Module, dict], None] | None = None,
    extra_loss: ExtraLoss | None = None,
) -> tuple[nnx.Module, dict]:
    """Train ``model`` in place with softmax cross-entropy (plus an optional extra term).

    Args:
      model: an NNX classifier, images (B, H, W, C) -> logits (B, K).
      dataset: anything with ``images`` (N, H, W, C) float and ``labels`` (N,) int arrays
        (e.g. :class:`jaxlrp.data.Dataset`).
      epochs: passes over the data; each epoch visits a fresh random order drawn from
        ``seed`` (the last incomplete batch is dropped).
      batch_size, lr, weight_decay: see :func:`make_optimizer` (ignored if ``optimizer``).
      augment: optional ``augment(rng, images) -> images`` applied to each numpy batch.
      eval_dataset: optional dataset evaluated after each epoch (``history["eval_accuracy"]``).
      progress: show a tqdm progress bar.
      optimizer: an optax transformation replacing the default.
      on_epoch: optional ``on_epoch(epoch, model, history)`` called after each epoch with
        an eval-mode copy of the model (e.g. to save a checkpoint as training goes).
      extra_loss: optional :data:`ExtraLoss` added to the cross-entropy, e.g. an
        explanation penalty ("right for the right reasons", ``notebooks/03``). Its keys
        are drawn from ``seed``: ``fold_in(key(seed), step)``.
    Returns:
      ``(model, history)``: the same model (eval mode) and a dict of per-epoch lists
      ``loss`` (the full objective), ``accuracy`` (training batches), ``eval_accuracy``
      (if requested), one list per scalar logged by ``extra_loss``, and ``seconds``
      (total training wall time).
    """
    if not isinstance(model, nnx.Module):
        raise ExplanationError(f"model: expected a flax.nnx.Module, got {type(model).__name__}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    images, labels = _arrays(dataset, "dataset")
    n = images.shape[0]
    if n < batch_size:
        raise ExplanationError(
            f"batch_size: {batch_size} is larger than the dataset ({n} examples)"
        )
    steps_per_epoch = n // batch_size
    tx = optimizer or make_optimizer(lr, epochs * steps_per_epoch, weight_decay=weight_decay)

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)

    def loss_fn(params, rest, x, y, key):
        m = nnx.merge(graphdef, params, rest, copy=True)
        logits = m(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        logs: dict = {}
        if extra_loss is not None:
            out = extra_loss(m, x, y, key)
            term, logs = out if isinstance(out, tuple) else (out, {})
            loss = loss + term
        return loss, (logits, nnx.state(m, nnx.Not(nnx.Param)), logs)

    @jax.jit
    def step(params, rest, opt_state, x, y, key):
        (loss, (logits, rest, logs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, x, y, key
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return params, rest, opt_state, loss, correct, logs

    @jax.jit
    def eval_logits(params, rest, x):
        m = nnx.merge(graphdef, params, rest, copy=True)
        m.eval()
        return m(x)

    history: dict[str, list] = {"loss": [], "accuracy": []}
    if eval_dataset is not None:
        history["eval_accuracy"] = []
    rng = np.random.default_rng(seed)
    root = jax.random.key(seed)
    bar = _progress(epochs * steps_per_epoch, progress)
    start = time.perf_counter()
    try:
        for _epoch in range(epochs):
            order = rng.permutation(n)
            tot_loss, tot_correct = 0.0, 0
            losses, logged = [], []
            for b in range(steps_per_epoch):
                idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
                x = images[idx]
                if augment is not None:
                    x = augment(rng, x)
                key = jax.random.fold_in(root, _epoch * steps_per_epoch + b)
                params, rest, opt_state, loss, correct, logs = step(
                    params, rest, opt_state, jnp.asarray(x), jnp.asarray(labels[idx]), key
                )
                losses.append(loss)
                logged.append(logs)
                tot_correct += correct
                if bar is not None:
                    bar.update(1)
                    if b % 10 == 0:
                        bar.set_postfix(loss=f"{float(loss):.3f}")
            tot_loss = float(jnp.mean(jnp.stack(losses)))
            history["loss"].append(tot_loss)
            history["accuracy"].append(float(tot_correct) / (steps_per_epoch * batch_size))
            for name in logged[0]:
                history.setdefault(name, []).append(
                    float(jnp.mean(jnp.stack([lg[name] for lg in logged]))))
            if eval_dataset is not None:
                ex, ey = _arrays(eval_dataset, "eval_dataset")
                logits = _batched(functools.partial(eval_logits, params, rest), ex, 256)
                history["eval_accuracy"].append(float(np.mean(np.argmax(logits, -1) == ey)))
            if bar is not None:
                post = {"loss": f"{tot_loss:.3f}", "acc": f"{history['accuracy'][-1]:.3f}"}
                if eval_dataset is not None:
                    post["eval"] = f"{history['eval_accuracy'][-1]:.3f}"
                bar.set_postfix(post)
            if on_epoch is not None:
                snapshot = nnx.merge(graphdef, params, rest, copy=True)
                snapshot.eval()
                on_epoch(_epoch, snapshot, history)
    finally:
        if bar is not None:
            bar.close()
    nnx.update(model, params, rest)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return model, history


def predict(model: Any, images: Any, batch_size: int = 256) -> np.ndarray:
    """Logits (N, K) of ``model`` (NNX in eval mode on a copy, or a Linen pair) in batches."""
    batch_size = check_positive_int(batch_size, "batch_size")
    adapter = as_adapter(model)
    fwd = jax.jit(adapter.apply)
    return _batched(lambda xb: fwd(adapter.params, xb), np.asarray(images), batch_size)


def _batched(fn: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(fn(jnp.asarray(images[i:i + batch_size])))
           for i in range(0, images.shape[0], batch_size)]
    return np.concatenate(out, axis=0)


def evaluate_accuracy(model: Any, dataset: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``dataset`` (``images``, ``labels``)."""
    images, labels = _arrays(dataset, "dataset")
    logits = predict(model, images, batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _arrays(dataset: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "labels", None)
    if images is None or labels is None:
        raise ExplanationError(
            f"{name}: expected an object with images (N, H, W, C) and labels (N,), "
            f"got {type(dataset).__name__}"
        )
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ExplanationError(
            f"{name}: expected images (N, H, W, C) and labels (N,) with N > 0, got "
            f"{images.shape} and {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ExplanationError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    return images, labels


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", leave=True)


# The explanation penalty lives in its own module; it is re-exported here for training code.
from jaxlrp.penalty import explanation_penalty  # noqa: E402, F401
