"""What the explained "logits" of a model output are: structured outputs reduced by the
``output=`` selector, and a trailing softmax/log_softmax found in the jaxpr and stripped
(see :mod:`jaxlrp._tracing`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxlrp.errors import ExplanationError


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, (dict, tuple))


def _desc(v: Any) -> str:
    return str(tuple(v.shape)) if _is_array(v) else type(v).__name__


def describe_output(out: Any) -> str:
    """What a structured model output contains, for error messages."""
    if isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        items = ", ".join(f"{k!r} {_desc(out[k])}" for k in out.keys())
        return f"a {type(out).__name__} with keys: {items}"
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        items = ", ".join(f"{f} {_desc(getattr(out, f))}" for f in out._fields)
        return f"a NamedTuple {type(out).__name__} with fields: {items}"
    if isinstance(out, (tuple, list)):
        items = ", ".join(f"[{i}] {_desc(v)}" for i, v in enumerate(out))
        return f"a {type(out).__name__} of {len(out)}: {items}"
    if dataclasses.is_dataclass(out):
        items = ", ".join(f"{f.name} {_desc(getattr(out, f.name))}"
                          for f in dataclasses.fields(out))
        return f"a dataclass {type(out).__name__} with fields: {items}"
    return f"a {type(out).__name__}"


_MISSING = object()


def _field(out: Any, name: str) -> Any:
    if hasattr(out, "keys") and hasattr(out, "__getitem__") and not isinstance(out, tuple):
        return out[name] if name in out.keys() else _MISSING
    if isinstance(out, (list, jax.Array, np.ndarray)):
        return _MISSING
    return getattr(out, name, _MISSING)


_HOW = ("choose the logits with jaxlrp.model(model, output=...): a key or attribute "
        "name, an index or a callable")


def select_output(out: Any, output: Any = None) -> jax.Array:
    """The logits array in the model's output ``out`` (see :func:`model`, ``output=``)."""
    if output is None:
        if _is_array(out):
            return out
        val = _field(out, "logits")
        if val is _MISSING:
            raise ExplanationError(
                f"output: the model returns {describe_output(out)}, and no 'logits' field; "
                + _HOW
            )
    elif callable(output):
        val = output(out)
    elif isinstance(output, str):
        val = _field(out, output)
        if val is _MISSING:
            raise ExplanationError(
                f"output: no key or attribute {output!r} in the model's output, which is "
                f"{describe_output(out)}"
            )
    else:
        if not isinstance(out, (tuple, list)):
            raise ExplanationError(
                f"output: index {output} needs a tuple or list output, the model returns "
                f"{describe_output(out)}"
            )
        if not -len(out) <= int(output) < len(out):
            raise ExplanationError(
                f"output: index {output} out of range for {describe_output(out)}"
            )
        val = out[int(output)]
    if not _is_array(val):
        raise ExplanationError(
            f"output: the selected output is {describe_output(val)}, expected an array of "
            "logits (B, K)"
        )
    return val


# ----------------------------------------------------------------------------- softmax


class _Stop(Exception):  # noqa: N818 - control flow, never escapes Adapter.apply
    """Ends a forward pass early with the logits (raised from a hook)."""

    def __init__(self, value: Any):
        super().__init__("jaxlrp: forward pass stopped at the logits")
        self.value = value


@dataclasses.dataclass
class _Plan:
    """How :meth:`Adapter.apply` gets logits: ``capture`` (path, call index) of the
    submodule output ``h`` from which ``eqns`` (replayed) compute the softmax input."""

    capture: tuple[str, int] | None = None
    kind: str = ""
    eqns: tuple = ()
    h_var: Any = None
    u_var: Any = None
    consts: dict = dataclasses.field(default_factory=dict)

    def logits(self, h: jax.Array) -> jax.Array:
        if not self.eqns:
            return h
        return _eval_eqns(self.eqns, {self.h_var: h}, self.consts)[self.u_var]


def _eval_eqns(eqns: Any, env: dict, consts: dict) -> dict:
    env = dict(env)

    def read(v):
        if isinstance(v, jcore.Literal):
            return v.val
        return env[v] if v in env else consts[v]

    for e in eqns:
        outs = e.primitive.bind(*map(read, e.invars), **e.primitive.get_bind_params(e.params))
        if not e.primitive.multiple_results:
            outs = [outs]
        env.update(zip(e.outvars, outs, strict=True))
    return env


def _slice(eqns: list, producer: dict, start: Any, end: Any, allowed: set) -> list | None:
    """Equations computing ``end`` from ``start`` alone (and ``allowed`` constants), in
    order, or None when ``end`` also depends on anything else."""
    need, stack, seen = set(), [end], set()
    while stack:
        v = stack.pop()
        if isinstance(v, jcore.Literal) or v is start or v in seen:
            continue
        seen.add(v)
        if v in allowed:
            continue
        i = producer.get(v)
        if i is None:
            return None
        need.add(i)
        stack.extend(eqns[i].invars)
    return [eqns[i] for i in sorted(need)]


def _is_softmax(fn_eqns: list, u: Any, out: Any, consts: dict) -> str:
    """'softmax' / 'log_softmax' when the equations map ``u`` to that of ``u`` on the
    last axis (checked on random values), else ''."""
    shape, dtype = tuple(u.aval.shape), u.aval.dtype
    tol = 1e-5 if jnp.finfo(dtype).bits >= 32 else 2e-2
    rng = np.random.default_rng(0)
    found = {"softmax", "log_softmax"}
    with jax.ensure_compile_time_eval():
        for _ in range(2):
            z = jnp.asarray(rng.standard_normal(shape) * 3.0, dtype)
            try:
                y = np.asarray(_eval_eqns(fn_eqns, {u: z}, consts)[out], np.float64)
            except Exception:  # noqa: BLE001 - anything that fails is not a softmax
                return ""
            zf = np.asarray(z, np.float64)
            ls = zf - zf.max(-1, keepdims=True)
            ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
            if not np.allclose(y, np.exp(ls), rtol=tol, atol=tol):
                found.discard("softmax")
            if not np.allclose(y, ls, rtol=tol, atol=10 * tol):
                found.discard("log_softmax")
    return found.pop() if found else ""


def _find_softmax(closed: Any, hooks: list[tuple[str, int]]) -> _Plan:
    """Find a trailing softmax/log_softmax in ``closed`` (outputs: the selected output,
    then every recorded submodule output, in call order)."""
    jaxpr = closed.jaxpr
    consts = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    out = jaxpr.outvars[0]
    if isinstance(out, jcore.Literal) or len(out.aval.shape) < 1:
        return _Plan()
    if not jnp.issubdtype(out.aval.dtype, jnp.floating):
        return _Plan()
    eqns = list(jaxpr.eqns)
    producer = {v: i for i, e in enumerate(eqns) for v in e.outvars}
    allowed = set(jaxpr.constvars)
    # candidates: vars of the output's shape in its backward cone, earliest first
    cone, stack = set(), [out]
    while stack:
        v = stack.pop()
        if isinstance(v, jcore.Literal) or v in cone:
            continue
        cone.add(v)
        i = producer.get(v)
        if i is not None:
            stack.extend(eqns[i].invars)
    order = {v: producer.get(v, -1) for v in cone}
    cands = sorted((v for v in cone if v is not out
                    and tuple(v.aval.shape) == tuple(out.aval.shape)
                    and jnp.issubdtype(v.aval.dtype, jnp.floating)),
                   key=lambda v: order[v])[-64:]
    for u in cands:
        fn = _slice(eqns, producer, u, out, allowed)
        if fn is None or not fn:
            continue
        kind = _is_softmax(fn, u, out, consts)
        if not kind:
            continue
        hook_vars = jaxpr.outvars[1:]
        for (path, n), hv in reversed(list(zip(hooks, hook_vars, strict=True))):
            if isinstance(hv, jcore.Literal):
                continue
            if hv is u:
                return _Plan((path, n), kind, (), hv, u, consts)
            pre = _slice(eqns, producer, hv, u, allowed)
            if pre is not None and hv in _inputs(pre):
                return _Plan((path, n), kind, tuple(pre), hv, u, consts)
        raise ExplanationError(
            f"model: the model ends in {kind}, but its input is not computed from one "
            "submodule output; return the logits from the model, or explain the "
            "probabilities with jaxlrp.model(model, softmax='keep')"
        )
    return _Plan()


def _inputs(eqns: list) -> set:
    return {v for e in eqns for v in e.invars if not isinstance(v, jcore.Literal)}

