"""One view of a user's Flax model: NNX modules and Linen modules with variables.

Everything above this module (CAM, LRP, metrics) sees a model only through
:class:`Adapter`:

* ``adapter.params``: the model's array state, a pytree (differentiable leaves);
* ``adapter.apply(params, x, hook=None)``: a pure function ``(B,H,W,C) -> (B,K)``;
* a *hook* ``hook(path, module, output) -> output`` is called on the output of
  every submodule call while tracing, inside ``jax.named_scope`` of the module
  path, so that every jaxpr equation carries its module path in
  ``source_info.name_stack`` for NNX as it does for Linen.

The user's model and classes are never modified: NNX submodule calls are intercepted
on the per-call copy that ``nnx.merge`` makes (see ``_nnx_scopes``).

What "logits" means (:meth:`Adapter.apply`, shared by CAM, LRP and the metrics):

* a structured output (dict, tuple, NamedTuple, dataclass, Hugging Face output) is
  reduced to one array by the ``output=`` selector of :func:`model`; by default its
  ``logits`` key or attribute;
* a model that ends in ``softmax`` or ``log_softmax`` (found in its jaxpr, whatever code
  computes it) has its pre-softmax input explained instead: the trace stops at the
  last submodule output feeding the softmax and the few operations between that output
  and the softmax input are replayed. :func:`model` ``(..., softmax="keep")`` explains
  the probabilities instead;
* a Linen module whose ``__call__`` takes ``train``, ``training``, ``is_training``,
  ``deterministic`` or ``use_running_average`` runs in evaluation mode
  (``train=False``, ``deterministic=True``, ...) unless the user passes that argument.
"""

from jaxlrp._tracing.adapter import (
    Adapter,
    LayerInfo,
    LinenAdapter,
    LinenModel,
    LinenOutput,
    NNXAdapter,
    NNXOutput,
    all_concrete,
    apply_checked,
    as_adapter,
    cached_shapes,
    layers,
    linen,
    model,
    shape_key,
    static_key,
)
from jaxlrp._tracing.linen import EVAL_FLAGS, eval_flags
from jaxlrp._tracing.outputs import describe_output, select_output
from jaxlrp._tracing.scope import Hook, hook_filter, rescope

__all__ = [
    "EVAL_FLAGS", "Adapter", "Hook", "LayerInfo", "LinenAdapter", "LinenModel", "LinenOutput",
    "NNXAdapter", "NNXOutput", "all_concrete", "apply_checked", "as_adapter", "cached_shapes",
    "describe_output", "eval_flags", "hook_filter", "layers", "linen", "model", "rescope",
    "select_output", "shape_key", "static_key",
]
