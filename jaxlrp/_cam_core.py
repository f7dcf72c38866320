"""The CAM core shared by every CAM method: layer policy (the default CAM layer, the
(h, w) grid of a token layer), layer resolution, one forward and backward pass for
activations and gradients, the weighted channel sum and pytorch-grad-cam's
post-processing. Used by :mod:`jaxlrp.cam`, :mod:`jaxlrp._cam_exact` and the hybrid."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from jaxlrp import _image as image
from jaxlrp._lrp import fast_forward
from jaxlrp._tracing import (
    Adapter,
    LayerInfo,
    LinenModel,
    all_concrete,
    apply_checked,
    cached_shapes,
)
from jaxlrp._validation import (
    Target,
    resolve_targets,
)
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
    (one backward pass on a random input). Which tokens reach the logits is a property of
    the structure, so traced parameters (the model is an argument of ``jax.jit``) are
    replaced by random ones of the same shapes (:func:`_probe_params`)."""
    params = adapter.params
    with jax.ensure_compile_time_eval():
        if not all_concrete(params):
            params = _probe_params(params)
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



def _probe_params(params: Any) -> Any:
    """Concrete stand-ins for (possibly traced) parameters, for structural probes.

    Floating leaves become uniform values in [0.5, 1) scaled by 1/sqrt(fan-in) (positive,
    so variances and scales stay valid and activations stay finite); integer and bool
    leaves become zeros, PRNG keys fresh keys.
    """
    rng = np.random.default_rng(0)

    def stand_in(leaf: Any) -> Any:
        shape, dtype = tuple(jnp.shape(leaf)), jnp.result_type(leaf)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            n = int(np.prod(shape))
            return jax.random.split(jax.random.key(0), n).reshape(shape)
        if not jnp.issubdtype(dtype, jnp.floating):
            return jnp.zeros(shape, dtype)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        values = rng.uniform(0.5, 1.0, shape) / np.sqrt(max(fan_in, 1))
        return jnp.asarray(values, dtype)

    return jax.tree_util.tree_map(stand_in, params)


# ----------------------------------------------------------------------------- layer + core


def _model_shapes(adapter: Adapter, x: jax.Array) -> dict:
    """Logits shape (validated by ``apply_checked``) and layer list, cached per model
    structure, parameter shapes and input shape (:func:`jaxlrp._tracing.cached_shapes`)."""
    return cached_shapes(
        "cam", adapter, x,
        lambda: {"logits": apply_checked(adapter, x), "layers": adapter.layers(x)},
    )


def resolve_layer(
    adapter: Adapter, x: jax.Array, layer: str | None, tokens: Any = None
) -> tuple[str, tuple]:
    """Check ``layer`` (a module path, or None for the default CAM layer).

    ``tokens``: None, ``(h, w)`` or ``(h, w, skip)`` for a token layer (B, N, D)
    (:func:`jaxlrp._cam_core.token_grid`).

    Returns:
      (path, shape of the CAM's view of its output, (B, h, w, C)).
    """
    if tokens is not None:
        check_tokens(tokens)
    entry = _model_shapes(adapter, x)
    infos = entry["layers"]
    if layer is None:
        if "default" not in entry:
            entry["default"] = default_cam_layer(adapter, x)
        layer = entry["default"]
    if not isinstance(layer, str):
        raise ExplanationError(
            f"layer: expected a module path string such as 'features/3' or None, "
            f"got {type(layer).__name__}"
        )
    hits = [i for i in infos if i.path == layer]
    if not hits:
        paths = list(dict.fromkeys(i.path for i in infos))
        raise ExplanationError(
            f"layer: no submodule {layer!r} in the model; available paths: {paths}"
        )
    if len(hits) > 1:
        raise ExplanationError(
            f"layer: submodule {layer!r} is called {len(hits)} times in one forward pass; "
            "choose a module that is called once"
        )
    shape = hits[0].shape
    if len(shape) == 3 and shape[0] == x.shape[0]:
        grid = token_grid(shape, tokens, layer)
        if grid is None:
            raise ExplanationError(
                f"layer: {layer!r} outputs tokens of shape {shape}, and {shape[1]} tokens "
                "are not a square grid plus up to 5 leading class/register tokens; pass "
                "tokens=(h, w) or (h, w, skip) (grid = tokens skip .. skip + h*w - 1)"
            )
        return layer, (shape[0], grid[0], grid[1], shape[2])
    if len(shape) != 4 or shape[0] != x.shape[0]:
        spatial = [i.path for i in infos if len(i.shape) == 4]
        tok = [i.path for i in infos if token_grid(i.shape) is not None]
        raise ExplanationError(
            f"layer: {layer!r} outputs shape {shape}, expected a spatial map (B, h, w, C) "
            f"or tokens (B, N, D) on a grid; layers with spatial outputs: {spatial}; "
            f"with token outputs: {tok}"
        )
    if tokens is not None:
        raise ExplanationError(
            f"tokens: {layer!r} outputs a spatial map {shape}, not tokens (B, N, D); "
            "pass tokens=None"
        )
    return layer, shape


def to_grid(a: jax.Array, tokens: Any = None) -> jax.Array:
    """The CAM's view of a layer output: (B, h, w, C) unchanged; tokens (B, N, D) ->
    (B, h, w, D), dropping the extra tokens (:func:`jaxlrp._cam_core.token_grid`)."""
    if a.ndim != 3:
        return a
    grid = token_grid(a.shape, tokens)
    if grid is None:
        raise ExplanationError(f"layer: token output of shape {a.shape} has no grid; "
                               "pass tokens=(h, w) or (h, w, skip)")
    h, w, skip = grid
    return a[:, skip:skip + h * w].reshape(a.shape[0], h, w, a.shape[2])


def _target_scores(logits: jax.Array, t: jax.Array) -> jax.Array:
    """(B,) logits of the targets; out-of-range traced targets are clipped (then poisoned)."""
    t = jnp.clip(t, 0, logits.shape[-1] - 1)
    return jnp.take_along_axis(logits, t[:, None], axis=1)[:, 0]


def activations_and_gradients(
    adapter: Adapter, params: Any, x: jax.Array, target: Target, layer: str,
    tokens: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Layer activations and the gradient of the target logits w.r.t. them.

    One forward and one backward pass. The score is ``sum_b logits[b, t_b]``; examples
    are independent (evaluation mode), so ``dA[b]`` is the gradient of example b's logit.

    Args:
      adapter: the model's :class:`jaxlrp._tracing.Adapter`.
      params: its parameters (``adapter.params`` or a traced copy).
      x: (B, H, W, C) images.
      target: int, (B,) ints or "predicted".
      layer: module path of the layer (see :func:`resolve_layer`).
      tokens: grid of a token layer (:func:`to_grid`).
    Returns:
      (A, dA, logits): (B, h, w, C), (B, h, w, C), (B, K); a token layer's
      (B, N, D) output and gradient are returned on their grid (:func:`to_grid`).
    """
    shape = jax.eval_shape(lambda p, xx: _capture(adapter, p, xx, layer), params, x)
    delta0 = jnp.zeros(shape.shape, shape.dtype)

    def run(p, xx, delta):
        seen: list = []
        return adapter.apply(p, xx, hook=add_at_layer(layer, delta, seen)), seen[0]

    def score(delta):
        # max-pools with the lowering measured fastest (jaxlrp._lrp.fast_forward)
        logits, acts = fast_forward.call(run, params, x, delta)
        t = jax.lax.stop_gradient(resolve_targets(target, logits))
        return jnp.sum(_target_scores(logits, t)), (acts, logits)

    _, vjp, (acts, logits) = jax.vjp(score, delta0, has_aux=True)
    (grads,) = vjp(jnp.ones((), logits.dtype))
    return to_grid(acts, tokens), to_grid(grads, tokens), logits


def add_at_layer(layer: str, delta: Any, seen: list | None = None) -> Any:
    """An adapter hook adding ``delta`` to the output of the module at path ``layer``
    (appending that output, before the addition, to ``seen`` when given).

    Differentiating with respect to a zero ``delta`` gives the gradient at the layer's
    output: the CAMs, the exact Grad-CAM++ and the hybrid's layer gradient use it.
    """

    def hook(path, module, out):
        if path != layer:
            return out
        if seen is not None:
            seen.append(out)
        return out + delta

    return hook


def _capture(adapter: Adapter, params: Any, x: jax.Array, layer: str) -> jax.Array:
    seen = []

    def hook(path, module, out):
        if path == layer:
            seen.append(out)
        return out

    adapter.apply(params, x, hook=hook)
    return seen[0]



def weighted_sum(acts: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_c w_c A_c``: (B,h,w,C), (B,C) -> (B,h,w)."""
    return jnp.einsum("bhwc,bc->bhw", acts, weights, precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------- post-processing


def postprocess(
    cam: jax.Array, size: tuple[int, int], *, relu: bool, upsample: bool, normalize: bool
) -> jax.Array:
    """pytorch-grad-cam's order: ReLU, min-max, bilinear resize to ``size``, min-max.

    (B,h,w) -> (B,H,W) (or (B,h,w) without ``upsample``).
    """
    if relu:
        cam = image.relu(cam)
    if normalize:
        cam = image.minmax_normalize(cam)
    if upsample:
        cam = image.resize(cam, size)
        if normalize:
            cam = image.minmax_normalize(cam)
    return cam


def _jittable(model: Any) -> Any:
    """The model as a pytree that ``jax.jit`` can take, or None (an :class:`Adapter`)."""
    if isinstance(model, (nnx.Module, LinenModel)):
        return model
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        return LinenModel(model[0], model[1])
    if isinstance(model, nn.Module) and model.scope is not None:  # bound
        return LinenModel(*model.unbind())
    return None


