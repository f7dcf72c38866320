"""Explainers by name, as hashable values ``explain(model, x, target) -> (B, H, W)``.

Used by the CLI, the evaluation driver and the metrics (which take an explainer).
CAMs and the hybrid are in [0, 1]; ``lrp`` is the paper's signed channel mean of the
input relevance divided by the per-image max ``|R|`` (so in [-1, 1]).

:func:`get` returns an :class:`Explainer`: a frozen value ``(name, options)``. Two
explainers with the same name and options are equal and hash the same, so jitted
metrics that take the explainer as a static argument compile once for all of them.

The names come from two registries: every CAM method of :data:`jaxlrp.cam.CAMS`, and
:data:`EXPLAINERS` (``lrp``, ``hybrid``). Add an explainer with :func:`register`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax

from jaxlrp import cam as _cam
from jaxlrp._hybrid import hybrid, reduce_channels
from jaxlrp._image import max_abs_normalize
from jaxlrp._lrp.engine import lrp as _lrp
from jaxlrp.errors import ExplanationError
from jaxlrp.registry import Registry
from jaxlrp.typing import Reduction, Target

__all__ = ["EXPLAINERS", "Explainer", "ExplainerEntry", "get", "lrp_map", "names", "register",
           "title"]


def lrp_map(
    model: Any, x: jax.Array, target: Target = "predicted", *, composite: Any = None,
    reduce: Reduction = "mean", **kwargs: Any,
) -> jax.Array:
    """LRP reduced over channels and divided by the per-image max |R|: (B, H, W) in [-1, 1]."""
    return max_abs_normalize(reduce_channels(_lrp(model, x, target, composite, **kwargs), reduce))


@dataclasses.dataclass(frozen=True)
class ExplainerEntry:
    """A registered explainer: ``fn(model, x, target, **options) -> maps`` and its title."""

    name: str
    fn: Callable[..., jax.Array]
    title: str


EXPLAINERS: Registry[ExplainerEntry] = Registry("explainer", "explainer")
"""Explainers other than the CAM methods (those live in :data:`jaxlrp.cam.CAMS`)."""


def register(name: str, *, title: str | None = None, aliases: tuple[str, ...] = ()
             ) -> Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]:
    """Decorator registering ``fn(model, x, target, **options) -> maps`` as explainer ``name``.

    Afterwards ``get(name, **options)``, ``evaluate(explainers=[name])`` and ``jaxlrp
    explain --method name`` find it. Undo with ``EXPLAINERS.remove(name)``.
    """

    def deco(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        if name in _cam.CAMS:
            raise ExplanationError(f"name: {name!r} is already a CAM method")
        EXPLAINERS.add(name, ExplainerEntry(name, fn, title or name), aliases)
        return fn

    return deco


register("lrp", title="LRP")(lrp_map)
register("hybrid", title="hybrid")(hybrid)


def names() -> tuple[str, ...]:
    """Every explainer name: the CAM methods, then the others (canonical names)."""
    return _cam.CAMS.names() + EXPLAINERS.names()


def choices() -> tuple[str, ...]:
    """Every accepted spelling (names and aliases), for command-line choice lists."""
    return _cam.CAMS.choices() + EXPLAINERS.choices()


def canonical(name: Any) -> str:
    """The canonical spelling of an explainer name (``"gradcam_pp"`` -> ``"gradcam++"``)."""
    if name in _cam.CAMS:
        return _cam.CAMS.canonical(name)
    if name in EXPLAINERS:
        return EXPLAINERS.canonical(name)
    raise ExplanationError(f"explainer: unknown name {name!r}; expected one of {list(choices())}")


def title(name: str) -> str:
    """Display title of an explainer for figure panels (``"gradcam++"`` -> ``"Grad-CAM++"``);
    the name itself when unknown."""
    if name in _cam.CAMS:
        return _cam.CAMS.get(name).title
    if name in EXPLAINERS:
        return EXPLAINERS.get(name).title
    return name


def __getattr__(attr: str) -> Any:
    if attr == "NAMES":  # derived from the registries on every access
        return names()
    raise AttributeError(f"module 'jaxlrp.explainers' has no attribute {attr!r}")


def _static(value: Any) -> Any:
    """A hashable stand-in for an option value: the value itself, or its identity."""
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", id(value))  # the Explainer keeps the value alive, so the id is unique


@dataclasses.dataclass(frozen=True, eq=False)
class Explainer:
    """A named explainer with bound options, as a hashable value.

    ``Explainer("gradcam", (("layer", "features/2"),))(model, x, target)`` is
    ``jaxlrp.gradcam(model, x, target, layer="features/2")``. Equal name and options
    compare equal and hash the same (unhashable option values, such as a composite
    holding arrays, compare by identity). Build one with :func:`get`.

    Attributes:
      name: canonical explainer name.
      options: keyword options as sorted ``(name, value)`` pairs.
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def _key(self) -> tuple:
        return (self.name, tuple((k, _static(v)) for k, v in self.options))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Explainer) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def __name__(self) -> str:  # noqa: A003 - functions carry one; tools print it
        return self.name

    @property
    def title(self) -> str:
        """Display title for figure panels."""
        return title(self.name)

    def __call__(self, model: Any, x: Any, target: Target = "predicted") -> jax.Array:
        """Maps for a batch: (B, H, W, C) images -> (B, H, W)."""
        opts = dict(self.options)
        if self.name in _cam.CAMS:
            return _cam.explain_cam(self.name, model, x, target, **opts)
        return EXPLAINERS.get(self.name).fn(model, x, target, **opts)


def get(name: str, **options: Any) -> Explainer:
    """The explainer called ``name`` (see :func:`names`), with keyword ``options`` bound.

    Options go to the underlying function, e.g. ``get("lrp", composite="epsilon_plus")``,
    ``get("gradcam", layer="features/2")``, ``get("hybrid", threshold=0.3)``. Names are
    case-insensitive; aliases (``"gradcam_pp"``) give the canonical explainer, so
    ``get("gradcam_pp") == get("gradcam++")``.
    """
    name = canonical(name)
    if name in _cam.CAMS:
        entry = _cam.CAMS.get(name)
        accepted = {*dict(entry.defaults), *_CAM_COMMON}
        _cam._bind_options(entry, {k: v for k, v in options.items() if k not in _CAM_COMMON
                                   and k in accepted})  # checks the values now
    else:
        params = inspect.signature(EXPLAINERS.get(name).fn).parameters.values()
        accepted = None if any(p.kind is p.VAR_KEYWORD for p in params) else {
            p.name for p in params if p.kind is p.KEYWORD_ONLY}
    bad = sorted(set(options) - accepted) if accepted is not None else []
    if bad:
        raise ExplanationError(
            f"{bad[0]}: not an option of the explainer {name!r}; expected one of {sorted(accepted)}"
        )
    return Explainer(name, tuple(sorted(options.items())))


_CAM_COMMON = ("layer", "relu", "upsample", "normalize")
