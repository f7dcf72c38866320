"""CAM layer policy: the default CAM layer of a model and the (h, w) grid of a token
layer (B, N, D). Used by :mod:`jaxlrp.cam` and the hybrid."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp._tracing import Adapter, LayerInfo, all_concrete
from jaxlrp.errors import ExplanationError

MAX_EXTRA_TOKENS = 5


def token_grid(shape: tuple[int, ...], tokens: Any = None,
               name: str = "layer") -> tuple[int, int, int] | None:
    """The (h, w, skip) grid of a token layer output (B, N, D), or None if there is none.

    Rule (``tokens=None``): ``N = h * w + extra`` with ``h == w >= 2`` and ``extra`` the
    fewest of 0 (no extra tokens), 1 (a class token), 2 (class + distillation token),
    ..., :data:`MAX_EXTRA_TOKENS` (class + 4 register tokens). Extra tokens are taken to
    be leading, as in ViT, DeiT and DINOv2: the grid is tokens ``skip = extra`` to
    ``N - 1``, row-major. ``tokens=(h, w)`` or ``(h, w, skip)`` overrides the rule: the
    grid is tokens ``skip .. skip + h*w - 1`` (``skip`` defaults to ``N - h*w``); every
    other token is dropped.
    """
    if len(shape) != 3:
        return None
    n = shape[1]
    if tokens is not None:
        h, w, skip = check_tokens(tokens)
        skip = n - h * w if skip is None else skip
        if skip < 0 or skip + h * w > n:
            raise ExplanationError(
                f"tokens: a {h}x{w} grid after {skip} skipped tokens does not fit the "
                f"{n} tokens of {name!r} (output shape {tuple(shape)})"
            )
        return h, w, skip
    for extra in range(MAX_EXTRA_TOKENS + 1):
        side = int(round((n - extra) ** 0.5)) if n - extra > 0 else 0
        if side >= 2 and side * side == n - extra:
            return side, side, extra
    return None


def check_tokens(tokens: Any) -> tuple[int, int, int | None]:
    """Validate ``tokens=(h, w)`` or ``(h, w, skip)``; returns (h, w, skip or None)."""
    ok = isinstance(tokens, (tuple, list)) and len(tokens) in (2, 3) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tokens)
    if not ok or min(tokens[:2]) < 1 or (len(tokens) == 3 and tokens[2] < 0):
        raise ExplanationError(
            "tokens: expected None, (h, w) or (h, w, skip) with positive ints h, w and "
            f"skip >= 0 (skipped leading tokens), got {tokens!r}"
        )
    return int(tokens[0]), int(tokens[1]), (int(tokens[2]) if len(tokens) == 3 else None)


def default_cam_layer(adapter: Adapter, x: jax.Array) -> str:
    """The default CAM layer of a model.

    * Convolutional model (its last spatial layer comes after its last token layer):
      the last submodule with parameters whose output is a spatial map (B, H, W, C),
      H*W > 1.
    * Token model (a ViT; its last token layer comes last): the *blocks* are the
      outermost submodules with parameters whose output is a token map (B, N, D) with a
      grid (:func:`token_grid`), normalisation layers excluded. The default is the last
      block whose grid tokens influence the logits: with class-token pooling the last
      block's patch tokens get exactly zero gradient, so it is the block before it (the
      last block's input, as pytorch-grad-cam's ViT tutorial); with mean pooling, the
      last block. Influence is probed once per model structure and input shape with one
      gradient on a random input (the model's parameters when concrete; else the last
      block).
    """
    infos = adapter.layers(x)
    spatial = [i for i, info in enumerate(infos)
               if len(info.shape) == 4 and info.shape[1] * info.shape[2] > 1
               and info.has_params]
    tokens = [i for i, info in enumerate(infos)
              if info.has_params and token_grid(info.shape) is not None]
    if tokens and (not spatial or tokens[-1] > spatial[-1]):
        return _default_token_layer(adapter, x, [infos[i] for i in tokens])
    if not spatial:
        raise ExplanationError(
            "layer: the model has no submodule with a spatial (B, H, W, C) or token "
            "(B, N, D) output; name a layer explicitly (see jaxlrp.layers(model, x))"
        )
    return infos[spatial[-1]].path


def _default_token_layer(adapter: Adapter, x: jax.Array, infos: list[LayerInfo]) -> str:
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.path] = counts.get(info.path, 0) + 1
    paths = [i.path for i in infos]
    blocks = [i for i in infos
              if counts[i.path] == 1
              and not any(i.path.startswith(p + "/") for p in paths)
              and "norm" not in i.type_name.lower()]
    if not blocks:
        blocks = [i for i in infos if counts[i.path] == 1] or infos
    influence = _token_influence(adapter, x, blocks)
    for info, ok in zip(reversed(blocks), reversed(influence), strict=True):
        if ok:
            return info.path
    return blocks[-1].path


def _token_influence(adapter: Adapter, x: jax.Array, blocks: list[LayerInfo]) -> list[bool]:
    """Whether the grid tokens of each block get a nonzero gradient of the summed logits
    (one backward pass on a random input); all True when parameters are traced."""
    params = adapter.params
    if not all_concrete(params):
        return [True] * len(blocks)
    with jax.ensure_compile_time_eval():
        rng = np.random.default_rng(0)
        xr = jnp.asarray(rng.uniform(0, 1, x.shape), x.dtype)
        deltas = {b.path: jnp.zeros(b.shape, x.dtype) for b in blocks}

        def total(ds):
            def hook(path, module, out):
                return out + ds[path].astype(out.dtype) if path in ds else out

            return jnp.sum(adapter.apply(params, xr, hook=hook).astype(jnp.float32))

        grads = jax.jit(jax.grad(total))(deltas)  # one compile, not op-by-op dispatch
        out = []
        for b in blocks:
            h, w, skip = token_grid(b.shape)
            g = np.asarray(grads[b.path][:, skip:skip + h * w])
            out.append(bool(np.any(g != 0)))
    return out

