"""Linen specifics of the adapter: evaluation-mode flags read from ``__call__``'s
signature, and Flax scope errors turned into :class:`~jaxlrp.errors.ExplanationError`."""

from __future__ import annotations

import inspect
import re
from typing import Any

import jax
from flax import errors as flax_errors
from flax import linen as nn

from jaxlrp.errors import ExplanationError

# evaluation-mode values of the usual Linen __call__ flags
EVAL_FLAGS = {
    "train": False,
    "training": False,
    "is_training": False,
    "deterministic": True,
    "use_running_average": True,
}


def eval_flags(module: nn.Module, given: dict) -> dict:
    """The evaluation-mode flags (:data:`EVAL_FLAGS`) that ``module.__call__`` accepts
    and ``given`` does not set."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in EVAL_FLAGS.items()
            if k in params and params[k].kind in kinds and k not in given}


def _flax_message(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"\s*\(https?://[^)]*\)", "", msg).strip().rstrip(".")


def _linen_error(e: Exception, variables: Any, x: jax.Array, kwargs: dict) -> ExplanationError:
    """A clear :class:`ExplanationError` for a Flax scope error raised by ``apply``."""
    msg = _flax_message(e)
    col = re.search(r'collection "([^"]+)"', str(e))
    col = col.group(1) if col else "?"
    if isinstance(e, flax_errors.ScopeCollectionNotFound):
        keys = list(variables.keys()) if hasattr(variables, "keys") else []
        return ExplanationError(
            f"model: the Linen variables have no {col!r} collection (they have {keys}): "
            f"{msg}. Pass every collection that module.init returned, e.g. "
            "jaxlrp.linen(module, {'params': ..., 'batch_stats': ...})"
        )
    if isinstance(e, flax_errors.ModifyScopeVariableError):
        flags = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
        return ExplanationError(
            f"model: the Linen model updates its {col!r} collection, i.e. runs in training "
            f"mode (apply arguments: {flags or 'none'}): {msg}. Explain it in evaluation "
            "mode, e.g. jaxlrp.linen(module, variables, train=False)"
        )
    if isinstance(e, flax_errors.ScopeParamShapeError):
        hint = ""
        if len(x.shape) == 4 and x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
            hint = (f"; x looks channels-first (NCHW): pass x.transpose(0, 2, 3, 1) "
                    f"(shape {(x.shape[0], x.shape[2], x.shape[3], x.shape[1])})")
        return ExplanationError(
            f"x: the Linen model's parameters do not fit an input of shape "
            f"{tuple(x.shape)}: {msg}. jaxlrp expects channels-last images (B, H, W, C)"
            + hint
        )
    return ExplanationError(f"model: the Linen model cannot be applied: {msg}")

