"""The Grad-CAM family as pure JAX functions of ``(model, x, target)``.

Every explainer returns one map per example, ``(B, H, W)`` at the input resolution
(``upsample=False``: ``(B, h, w)`` at the layer resolution). They follow
pytorch-grad-cam 1.5.7 formula for formula:

=============  ==========================================================================
``gradcam``    ``w_c = mean_ij g``; ``cam = sum_c w_c A_c``
``gradcam_pp`` ``a = g^2 / (2 g^2 + sum_ij(A) g^3 + eps)`` (0 where g == 0);
               ``w_c = sum_ij relu(g) a`` (the closed form for exp(score))
``xgradcam``   ``w_c = sum_ij g A / (sum_ij A + eps)``
``layercam``   ``cam = sum_c relu(g) A``
``hirescam``   ``cam = sum_c g A``
``scorecam``   ``w = softmax_c(score(x * norm(up(A_c))))`` over channels
=============  ==========================================================================

where ``A`` is the chosen layer's output ``(B, h, w, C)`` and ``g = d logit_t / d A``.

Token models (ViTs): a layer whose output is ``(B, N, D)`` is viewed as a grid
``(B, h, w, D)`` (:func:`to_grid`): ``N = h*w + extra`` with a square grid and up to
five leading extra tokens (class, distillation, register tokens), which are dropped from
both ``A`` and ``g``, as pytorch-grad-cam's ``reshape_transform`` does. ``tokens=(h, w)``
or ``(h, w, skip)`` sets the grid explicitly (:func:`jaxlrp._cam_layers.token_grid`). The
default layer of a token model is the last block whose patch tokens influence the logits
(:func:`jaxlrp._cam_layers.default_cam_layer`).
Post-processing, in pytorch-grad-cam's order: ReLU, per-map min-max normalisation at the
layer resolution, bilinear resize to the input size (``cv2.resize`` semantics), min-max
normalisation again. ``relu=False`` / ``normalize=False`` / ``upsample=False`` skip steps.

Activations and gradients come from one forward and one backward pass
(:func:`activations_and_gradients`): the adapter's hook adds a zero ``delta`` to the
layer output and ``jax.vjp`` w.r.t. ``delta`` gives ``dA``. Everything is traceable: the
explainers work under ``jax.jit``, ``jax.vmap`` and ``jax.grad`` (w.r.t. inputs and, for
NNX modules or :class:`jaxlrp.LinenModel`, parameters).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxlrp import _cache
from jaxlrp import _image as image
from jaxlrp._cam_layers import check_tokens, default_cam_layer, token_grid
from jaxlrp._lrp import fast_forward
from jaxlrp._tracing import (
    Adapter,
    LinenModel,
    all_concrete,
    apply_checked,
    as_adapter,
    cached_shapes,
    static_key,
)
from jaxlrp._validation import (
    Target,
    check_images,
    check_positive_int,
    finite_rows,
    poison,
    resolve_targets,
    valid_targets,
)
from jaxlrp.errors import ExplanationError
from jaxlrp.registry import Registry

__all__ = [
    "CAMS",
    "CAMMethod",
    "activations_and_gradients",
    "explain_cam",
    "diagonal_derivatives",
    "gradcam_pp_exact",
    "gradcam_pp_general_weights",
    "gradcam",
    "gradcam_pp",
    "gradcam_pp_weights",
    "gradcam_weights",
    "hirescam",
    "hirescam_map",
    "layercam",
    "layercam_map",
    "postprocess",
    "register_cam",
    "resolve_layer",
    "scorecam",
    "scorecam_scores",
    "to_grid",
    "weighted_sum",
    "xgradcam",
    "xgradcam_weights",
]



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
    (:func:`jaxlrp._cam_layers.token_grid`).

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
    (B, h, w, D), dropping the extra tokens (:func:`jaxlrp._cam_layers.token_grid`)."""
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
        seen = []

        def hook(path, module, out):
            if path == layer:
                seen.append(out)
                return out + delta
            return out

        return adapter.apply(p, xx, hook=hook), seen[0]

    def score(delta):
        # max-pools with the lowering measured fastest (jaxlrp._lrp.fast_forward)
        logits, acts = fast_forward.call(run, params, x, delta)
        t = jax.lax.stop_gradient(resolve_targets(target, logits))
        return jnp.sum(_target_scores(logits, t)), (acts, logits)

    _, vjp, (acts, logits) = jax.vjp(score, delta0, has_aux=True)
    (grads,) = vjp(jnp.ones((), logits.dtype))
    return to_grid(acts, tokens), to_grid(grads, tokens), logits


def _capture(adapter: Adapter, params: Any, x: jax.Array, layer: str) -> jax.Array:
    seen = []

    def hook(path, module, out):
        if path == layer:
            seen.append(out)
        return out

    adapter.apply(params, x, hook=hook)
    return seen[0]


# ----------------------------------------------------------------------------- weightings


def gradcam_weights(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """Grad-CAM channel weights: spatial mean of the gradients. (B,h,w,C) -> (B,C)."""
    del acts
    return jnp.mean(grads, axis=(1, 2))


def gradcam_pp_weights(acts: jax.Array, grads: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Grad-CAM++ channel weights (closed form for exp(score), as pytorch-grad-cam).

    ``a = g^2 / (2 g^2 + sum_ij(A) g^3 + eps)``, zero where ``g == 0``;
    ``w_c = sum_ij relu(g) a``. (B,h,w,C) -> (B,C).
    """
    g2 = grads * grads
    g3 = g2 * grads
    sum_a = jnp.sum(acts, axis=(1, 2), keepdims=True)
    denom = 2 * g2 + sum_a * g3 + eps
    nz = grads != 0
    safe = jnp.where(nz, denom, jnp.ones_like(denom))
    alpha = jnp.where(nz, g2 / safe, jnp.zeros_like(g2))
    return jnp.sum(jnp.maximum(grads, 0) * alpha, axis=(1, 2))


def xgradcam_weights(acts: jax.Array, grads: jax.Array, eps: float = 1e-7) -> jax.Array:
    """XGrad-CAM channel weights ``sum_ij g A / (sum_ij A + eps)``. (B,h,w,C) -> (B,C)."""
    sum_a = jnp.sum(acts, axis=(1, 2), keepdims=True)
    return jnp.sum(grads * acts / (sum_a + eps), axis=(1, 2))


def weighted_sum(acts: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_c w_c A_c``: (B,h,w,C), (B,C) -> (B,h,w)."""
    return jnp.einsum("bhwc,bc->bhw", acts, weights, precision=jax.lax.Precision.HIGHEST)


def layercam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """LayerCAM ``sum_c relu(g) A``: (B,h,w,C) -> (B,h,w)."""
    return jnp.sum(jnp.maximum(grads, 0) * acts, axis=-1)


def hirescam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """HiResCAM ``sum_c g A``: (B,h,w,C) -> (B,h,w)."""
    return jnp.sum(grads * acts, axis=-1)


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


def _explain(
    model: Any, x: Any, target: Target, layer: str | None, method: str, relu: bool,
    upsample: bool, normalize: bool, opts: tuple = (), tokens: Any = None,
) -> jax.Array:
    """Validate at the boundary, then run the (cached) jitted explainer."""
    adapter = as_adapter(model)
    x = check_images(x, "x")
    logits = _model_shapes(adapter, x)["logits"]
    layer, _ = resolve_layer(adapter, x, layer, tokens)
    tokens = None if tokens is None else tuple(int(t) for t in tokens)
    if isinstance(target, str):
        resolve_targets(target, jnp.zeros((1, 1)))  # only checks the string
        predicted, target = True, None
    else:
        predicted, target = False, resolve_targets(target, logits)
    static = dict(method=method, layer=layer, predicted=predicted, relu=relu,
                  upsample=upsample, normalize=normalize, opts=opts, tokens=tokens)
    tree = _jittable(model)
    if tree is None or not all_concrete(tree, x, target):
        return _explain_core(adapter if tree is None else tree, x, target, **static)
    # eager: one compile per structure and options (jaxlrp._cache.JIT)
    key = ("cam", static_key(adapter), tuple(sorted(static.items())))
    return _cache.jit_call(_cache.JIT, key, _explain_cached, (static,), (tree, x, target))


def _explain_cached(static: dict, tree: Any, x: jax.Array, target: Any) -> jax.Array:
    return _explain_core(tree, x, target, **static)


def _explain_core(
    model: Any, x: jax.Array, target: jax.Array | None, *, method: str, layer: str,
    predicted: bool, relu: bool, upsample: bool, normalize: bool, opts: tuple,
    tokens: tuple | None = None,
) -> jax.Array:
    adapter = as_adapter(model)
    target = "predicted" if predicted else target
    opts = dict(opts)
    if method == "scorecam":
        cam, t, k = _scorecam_raw(adapter, x, target, layer, tokens=tokens, **opts)
    else:
        acts, grads, logits = activations_and_gradients(adapter, adapter.params, x, target,
                                                        layer, tokens)
        t, k = resolve_targets(target, logits), logits.shape[-1]
        cam = CAMS.get(method).map(acts, grads, **opts)
    cam = postprocess(cam, x.shape[1:3], relu=relu, upsample=upsample, normalize=normalize)
    return poison(cam, finite_rows(x) & valid_targets(t, k))


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class CAMMethod:
    """One CAM method: what every table (explainers, hybrid, CLI, figures) needs of it.

    Attributes:
      name: canonical name (``"gradcam++"``).
      title: display title for figure panels (``"Grad-CAM++"``).
      map: ``map(acts, grads, **options) -> (B, h, w)`` from the layer's activations and
        gradients (B, h, w, C); None for a method that needs more than one backward pass
        (Score-CAM), which the hybrid cannot use.
      defaults: the method's options and their defaults, as sorted (name, value) pairs.
      aliases: other accepted spellings (``"gradcam_pp"``).
    """

    name: str
    title: str
    map: Callable[..., jax.Array] | None
    defaults: tuple[tuple[str, Any], ...] = ()
    aliases: tuple[str, ...] = ()


CAMS: Registry[CAMMethod] = Registry("CAM method", "cam")
"""Every CAM method by name. :func:`jaxlrp.explainers.get`, the hybrid's ``cam=``, the
CLI's ``--method``/``--cam`` choices and figure titles are all read from here."""


def register_cam(
    name: str, *, title: str | None = None, aliases: tuple[str, ...] = (), **defaults: Any
) -> Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]:
    """Decorator registering ``map(acts, grads, **options) -> (B, h, w)`` as a CAM method.

    ``defaults`` are the method's keyword options; afterwards ``name`` works in
    ``jaxlrp.explainers.get(name, **options)``, ``hybrid(..., cam=name)``, ``jaxlrp explain
    --method name`` and ``evaluate(explainers=[name])``::

        @jaxlrp.cam.register_cam("gradcam_abs", title="|Grad-CAM|")
        def gradcam_abs(acts, grads):  # (B, h, w, C) x 2 -> (B, h, w)
            return jnp.abs(jaxlrp.cam.weighted_sum(acts, jnp.mean(grads, axis=(1, 2))))

    Undo with ``jaxlrp.cam.CAMS.remove(name)``.
    """

    def deco(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        CAMS.add(name, CAMMethod(name, title or name, fn, tuple(sorted(defaults.items())),
                                 tuple(aliases)), tuple(aliases))
        return fn

    return deco


def _bind_options(method: CAMMethod, options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The method's defaults overridden by ``options``, validated, as sorted pairs."""
    defaults = dict(method.defaults)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ExplanationError(
            f"{unknown[0]}: not an option of the CAM method {method.name!r}; its options are "
            f"{sorted(defaults) or 'none'} (and layer, relu, upsample, normalize)"
        )
    for k, v in options.items():
        d = defaults[k]
        if isinstance(d, int) and not isinstance(d, bool):
            v = check_positive_int(v, k)
        elif isinstance(d, float):
            try:
                v = float(v)
            except (TypeError, ValueError) as e:
                raise ExplanationError(f"{k}: expected a number, got {v!r}") from e
        defaults[k] = v
    return tuple(sorted(defaults.items()))


def explain_cam(
    method: str, model: Any, x: Any, target: Target = "predicted", layer: str | None = None,
    *, relu: bool = True, upsample: bool = True, normalize: bool = True, tokens: Any = None,
    **options: Any,
) -> jax.Array:
    """The CAM method registered as ``method`` (see :data:`CAMS`), with its ``options``.

    ``explain_cam("gradcam++", model, x, eps=1e-6)`` equals ``gradcam_pp(model, x,
    eps=1e-6)``. Arguments as :func:`gradcam`.
    """
    entry = CAMS.get(method)
    opts = _bind_options(entry, options)
    return _explain(model, x, target, layer, entry.name, relu, upsample, normalize, opts,
                    tokens)


@register_cam("gradcam", title="Grad-CAM")
def _gradcam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    return weighted_sum(acts, gradcam_weights(acts, grads))


@register_cam("gradcam++", title="Grad-CAM++", aliases=("gradcam_pp",), eps=1e-6)
def _gradcam_pp_map(acts: jax.Array, grads: jax.Array, eps: float = 1e-6) -> jax.Array:
    return weighted_sum(acts, gradcam_pp_weights(acts, grads, eps))


@register_cam("xgradcam", title="XGrad-CAM", eps=1e-7)
def _xgradcam_map(acts: jax.Array, grads: jax.Array, eps: float = 1e-7) -> jax.Array:
    return weighted_sum(acts, xgradcam_weights(acts, grads, eps))


register_cam("layercam", title="LayerCAM")(layercam_map)
register_cam("hirescam", title="HiResCAM")(hirescam_map)
CAMS.add("scorecam", CAMMethod("scorecam", "Score-CAM", None, (("chunk_size", 32),)))


_ARGS_DOC = """
    Args:
      model: an NNX module, ``(linen_module, variables)`` or ``jaxlrp.linen(...)``.
      x: (B, H, W, C) floating images.
      target: class per example: an int, a (B,) int array or "predicted" (argmax).
      layer: module path of the layer to explain (see ``jaxlrp.layers(model, x)``);
        None picks the last spatial layer with parameters (CNNs) or the last block
        whose patch tokens influence the logits (ViTs).
      relu: apply ReLU to the map.
      upsample: resize bilinearly to (H, W) (cv2.resize semantics).
      normalize: min-max normalise each map to [0, 1] (constant maps become 0).
      tokens: for a token layer (B, N, D): None (a square grid after up to 5 leading
        class/register tokens), ``(h, w)`` or ``(h, w, skip)`` (grid = tokens
        ``skip .. skip + h*w - 1``; the others are dropped).
    Returns:
      (B, H, W) maps ((B, h, w) with ``upsample=False``); NaN for examples whose input
      has NaN/Inf or whose target is out of range (only when traced; eager input raises).
"""


def gradcam(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, tokens: Any = None,
) -> jax.Array:
    return explain_cam("gradcam", model, x, target, layer, relu=relu, upsample=upsample,
                       normalize=normalize, tokens=tokens)


def gradcam_pp(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, eps: float = 1e-6,
    tokens: Any = None, exact: bool = False, score: Any = None, chunk_size: int = 64,
) -> jax.Array:
    if exact:
        if tokens is not None:
            raise ExplanationError("tokens: not supported with exact=True yet; explain a "
                                   f"spatial (B, h, w, C) layer, got tokens={tokens!r}")
        return gradcam_pp_exact(model, x, target, layer, relu=relu, upsample=upsample,
                                normalize=normalize, score=score, chunk_size=chunk_size)
    if score is not None:
        raise ExplanationError("score: only used with exact=True (the closed form is that of "
                               f"exp(logit)), got {score!r}")
    return explain_cam("gradcam++", model, x, target, layer, relu=relu, upsample=upsample,
                       normalize=normalize, eps=eps, tokens=tokens)


def xgradcam(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, eps: float = 1e-7,
    tokens: Any = None,
) -> jax.Array:
    return explain_cam("xgradcam", model, x, target, layer, relu=relu, upsample=upsample,
                       normalize=normalize, eps=eps, tokens=tokens)


def layercam(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, tokens: Any = None,
) -> jax.Array:
    return explain_cam("layercam", model, x, target, layer, relu=relu, upsample=upsample,
                       normalize=normalize, tokens=tokens)


def hirescam(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, tokens: Any = None,
) -> jax.Array:
    return explain_cam("hirescam", model, x, target, layer, relu=relu, upsample=upsample,
                       normalize=normalize, tokens=tokens)


def scorecam(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, chunk_size: int = 32,
    tokens: Any = None,
) -> jax.Array:
    return explain_cam("scorecam", model, x, target, layer, relu=relu, upsample=upsample,
                       normalize=normalize, chunk_size=chunk_size, tokens=tokens)


def _scorecam_raw(
    adapter: Adapter, x: jax.Array, target: Target, layer: str, chunk_size: int,
    tokens: tuple | None = None,
) -> tuple[jax.Array, jax.Array, int]:
    """Score-CAM map (B, h, w) before post-processing, the targets (B,) and K."""
    params = adapter.params

    def run(p, xx):
        seen = []

        def hook(path, module, out):
            if path == layer:
                seen.append(out)
            return out

        return adapter.apply(p, xx, hook=hook), seen[0]

    logits, acts = fast_forward.call(run, params, x)
    acts = to_grid(acts, tokens)
    t = resolve_targets(target, logits)
    scores = scorecam_scores(adapter, params, x, acts, t, chunk_size)
    weights = jax.nn.softmax(scores, axis=-1)
    return weighted_sum(acts, weights.astype(acts.dtype)), t, logits.shape[-1]


def scorecam_scores(
    adapter: Adapter, params: Any, x: jax.Array, acts: jax.Array, t: jax.Array, chunk_size: int
) -> jax.Array:
    """Target logit of ``x`` masked by each normalised, upsampled activation channel.

    Masks: channel ``c`` of ``acts`` resized to (H, W) with aligned corners (as
    ``torch.nn.UpsamplingBilinear2d``), min-max normalised (constant -> 0). The B*C masked
    forward passes run ``chunk_size`` at a time (``jax.lax.map``), so memory is bounded by
    one chunk. Args: x (B,H,W,Cin), acts (B,h,w,C), t (B,). Returns (B, C).
    """
    b, _, _, c = acts.shape
    size = x.shape[1:3]
    n = b * c
    n_chunks = -(-n // chunk_size)
    ids = jnp.minimum(jnp.arange(n_chunks * chunk_size), n - 1).reshape(n_chunks, chunk_size)
    tc = jnp.clip(t, 0, None)

    def run(chunk: jax.Array) -> jax.Array:
        bi, ci = chunk // c, chunk % c
        a = jnp.moveaxis(acts, 3, 1)[bi, ci]  # (chunk, h, w)
        masks = image.minmax_normalize(image.resize(a, size, align_corners=True))
        xin = x[bi] * masks[..., None].astype(x.dtype)
        lg = fast_forward.apply(adapter, params, xin)
        return _target_scores(lg, tc[bi])

    scores = jax.lax.map(run, ids).reshape(-1)[:n]
    return scores.reshape(b, c)


for _f, _name in [
    (gradcam, "Grad-CAM (Selvaraju et al. 2017)"),
    (gradcam_pp, "Grad-CAM++ (Chattopadhay et al. 2018); ``eps`` as pytorch-grad-cam"),
    (xgradcam, "XGrad-CAM (Fu et al. 2020); ``eps`` as pytorch-grad-cam"),
    (layercam, "LayerCAM (Jiang et al. 2021)"),
    (hirescam, "HiResCAM (Draelos & Carin 2020)"),
    (scorecam, "Score-CAM (Wang et al. 2020); ``chunk_size`` masked images per forward pass"),
]:
    _f.__doc__ = f"{_name} maps for a batch of images.\n{_ARGS_DOC}"
del _f, _name
_EXACT_DOC = """      exact: the paper's general formula (eq. 10) with the exact diagonal second and
        third derivatives of ``score``: see :func:`gradcam_pp_exact` (``score`` and
        ``chunk_size`` are its arguments). False: the closed form for exp(logit) on a
        network that is piecewise linear after ``layer`` (pytorch-grad-cam's).
"""
gradcam_pp.__doc__ += _EXACT_DOC


# ----------------------------------------------------------------------------- exact Grad-CAM++

SCORES = ("exp_logit", "logit", "probability")


def _score_fn(score: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(logits (B, K), targets (B,)) -> (B,) score Y."""
    if callable(score):
        return score
    if score == "exp_logit":
        return lambda lg, t: jnp.exp(_target_scores(lg, t))
    if score == "logit":
        return _target_scores
    if score == "probability":
        return lambda lg, t: _target_scores(jax.nn.softmax(lg, axis=-1), t)
    raise ExplanationError(f"score: expected one of {SCORES} or a callable "
                           f"(logits, target) -> (B,), got {score!r}")


def diagonal_derivatives(
    adapter: Adapter, params: Any, x: jax.Array, target: Target, layer: str, score: Any,
    chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Activations A and the diagonal derivatives of the score Y w.r.t. each element of A.

    ``d_n[b, i, j, c] = d^n Y_b / (dA[b, i, j, c])^n`` for n = 1, 2, 3. The first comes
    from one reverse pass; the second and third, for each element e of the layer, from
    a nested forward-mode derivative of ``s -> Y(A + s e)`` at s = 0 (jvp of jvp of jvp:
    about 8 forward passes' work), all examples at once (they are independent). Cost:
    h * w * C such evaluations, ``chunk_size`` of them vectorised at a time: tractable for
    small layers (a 7x7x512 layer needs 25088 of them). Returns (A, d1, d2, d3, logits).
    """
    fn = _score_fn(score)
    shape = jax.eval_shape(lambda p, xx: _capture(adapter, p, xx, layer), params, x)
    acts = _capture(adapter, params, x, layer)
    logits = adapter.apply(params, x)
    t = jax.lax.stop_gradient(resolve_targets(target, logits))
    tc = jnp.clip(t, 0, logits.shape[-1] - 1)

    def scores(delta):  # (B, h, w, C) -> (B,)
        def hook(path, module, out):
            return out + delta if path == layer else out

        return fn(adapter.apply(params, x, hook=hook), tc)

    zero = jnp.zeros(shape.shape, shape.dtype)
    d1 = jax.grad(lambda d: jnp.sum(scores(d)))(zero)
    n = int(math.prod(shape.shape[1:]))

    def along(k):
        e = jnp.broadcast_to(jax.nn.one_hot(k, n, dtype=shape.dtype).reshape(shape.shape[1:]),
                             shape.shape)

        def f(s):
            return scores(s * e)

        def f1(s):
            return jax.jvp(f, (s,), (jnp.ones_like(s),))[1]

        def f2(s):
            return jax.jvp(f1, (s,), (jnp.ones_like(s),))[1]

        s0 = jnp.zeros((), shape.dtype)
        d2, d3 = jax.jvp(f2, (s0,), (jnp.ones_like(s0),))
        return d2, d3  # (B,), (B,)

    d2, d3 = jax.lax.map(along, jnp.arange(n), batch_size=min(chunk_size, n))
    d2 = jnp.moveaxis(d2, 0, 1).reshape(shape.shape)
    d3 = jnp.moveaxis(d3, 0, 1).reshape(shape.shape)
    return acts, d1, d2, d3, logits


def gradcam_pp_general_weights(acts: jax.Array, d1: jax.Array, d2: jax.Array,
                               d3: jax.Array) -> jax.Array:
    """Grad-CAM++ channel weights, Chattopadhay et al. eqs. 10 and 9. (B,h,w,C) -> (B,C).

    ``alpha = d2 / (2 d2 + sum_ab(A) d3)`` (0 where the denominator is 0),
    ``w_c = sum_ij alpha relu(d1)``, with d_n the diagonal n-th derivatives of the score.
    """
    sum_a = jnp.sum(acts, axis=(1, 2), keepdims=True)
    denom = 2 * d2 + sum_a * d3
    nz = denom != 0
    alpha = jnp.where(nz, d2 / jnp.where(nz, denom, 1), 0)
    return jnp.sum(alpha * jnp.maximum(d1, 0), axis=(1, 2))


def gradcam_pp_exact(
    model: Any, x: Any, target: Target = "predicted", layer: str | None = None, *,
    relu: bool = True, upsample: bool = True, normalize: bool = True, score: Any = None,
    chunk_size: int = 64,
) -> jax.Array:
    """Grad-CAM++ with the paper's general formula (eq. 10) for any differentiable score.

    ``score``: "exp_logit" (default; Y = exp(logit), the paper's choice), "logit",
    "probability" (softmax), or a callable ``(logits (B, K), target (B,)) -> (B,)``.
    The diagonal second and third derivatives of Y w.r.t. the layer's activations are
    computed exactly (:func:`diagonal_derivatives`; cost: h * w * C nested forward-mode
    evaluations of the model, ``chunk_size`` at a time).

    When it equals the usual closed form (``exact=False``, pytorch-grad-cam's): with
    Y = exp(S) and a network that is piecewise linear after ``layer`` (ReLU, max/avg
    pooling, convolutions, dense layers, BatchNorm in inference), d_n = exp(S) g^n with
    g = dS/dA, so alpha = g^2 / (2 g^2 + sum(A) g^3) and the map is exp(S) times the
    closed-form map with ``eps=0``: equal after the min-max normalisation. It differs for
    smooth activations after the layer (softplus, GELU, SiLU, sigmoid) and for other
    scores (a softmax probability; for the raw logit of a piecewise-linear network the
    second derivatives vanish and the map is 0).
    Returns (B, H, W) (or (B, h, w) without ``upsample``).
    """
    adapter = as_adapter(model)
    x = check_images(x, "x")
    logits = _model_shapes(adapter, x)["logits"]
    layer, _ = resolve_layer(adapter, x, layer)
    score = "exp_logit" if score is None else score
    _score_fn(score)  # checks the name
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    t = resolve_targets(target, logits)
    tree = _jittable(model)
    static = dict(layer=layer, score=score, chunk_size=chunk_size)
    if tree is None:
        cam = _exact_raw(adapter, x, t, **static)
    else:
        cam = _exact_raw_jit(tree, x, t, **static)
    cam = postprocess(cam, x.shape[1:3], relu=relu, upsample=upsample, normalize=normalize)
    return poison(cam, finite_rows(x) & valid_targets(t, logits.shape[-1]))


def _exact_raw(model: Any, x: jax.Array, t: jax.Array, *, layer: str, score: Any,
               chunk_size: int) -> jax.Array:
    adapter = as_adapter(model)
    acts, d1, d2, d3, _ = diagonal_derivatives(adapter, adapter.params, x, t, layer, score,
                                               chunk_size)
    return weighted_sum(acts, gradcam_pp_general_weights(acts, d1, d2, d3))


_exact_raw_jit = jax.jit(_exact_raw, static_argnames=("layer", "score", "chunk_size"))
