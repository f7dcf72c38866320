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
or ``(h, w, skip)`` sets the grid explicitly (:func:`jaxlrp._cam_core.token_grid`). The
default layer of a token model is the last block whose patch tokens influence the logits
(:func:`jaxlrp._cam_core.default_cam_layer`).
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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxlrp import _cache
from jaxlrp import _image as image
from jaxlrp._cam_core import (
    _jittable,
    _model_shapes,
    _target_scores,
    activations_and_gradients,
    postprocess,
    resolve_layer,
    to_grid,
    weighted_sum,
)
from jaxlrp._lrp import fast_forward
from jaxlrp._tracing import (
    Adapter,
    all_concrete,
    as_adapter,
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



def layercam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """LayerCAM ``sum_c relu(g) A``: (B,h,w,C) -> (B,h,w)."""
    return jnp.sum(jnp.maximum(grads, 0) * acts, axis=-1)


def hirescam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """HiResCAM ``sum_c g A``: (B,h,w,C) -> (B,h,w)."""
    return jnp.sum(grads * acts, axis=-1)


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
        from jaxlrp._cam_exact import gradcam_pp_exact

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

