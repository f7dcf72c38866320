"""The JAX primitives the LRP graph reads, by the role they play (:mod:`jaxlrp._lrp.graph`)."""

_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_CALL_PRIMS = {
    "pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
    "custom_vjp_call_jaxpr", "remat", "checkpoint", "custom_lin",
}
LINEAR_CORE = {"conv_general_dilated", "dot_general"}
POOL_CORE = {"reduce_sum", "reduce_window_sum"}
JOIN = {"add", "sub", "add_any"}
AFFINE = {"add", "sub", "mul", "div", "neg", "add_any"}
ELEMENTWISE = {
    "add", "sub", "mul", "div", "neg", "add_any", "max", "min", "exp", "exp2", "log", "log1p",
    "expm1", "tanh", "logistic", "abs", "sign", "select_n", "gt", "ge", "lt", "le", "eq", "ne",
    "integer_pow", "pow", "sqrt", "rsqrt", "cbrt", "erf", "erfc", "erf_inv", "sin", "cos", "clamp",
    "square", "floor", "ceil", "round", "is_finite", "not", "and", "or", "atan", "tan", "asinh",
    "sinh", "cosh", "stop_gradient", "nextafter",
}
GRADIENT = {
    "reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "convert_element_type",
    "slice", "pad", "rev", "copy", "copy_p", "reduce_precision", "concatenate", "dynamic_slice",
    "split", "reduce_window_max", "reduce_max", "reduce_min", "reduce_window_min", "gather",
}
SUPPORTED = (
    "conv/dense layers with constant weights, pooling and means, elementwise activations, "
    "residual adds, shape operations, normalisation layers (statistics of the same "
    "activation), softmax, and products of two activations (mul, div, dot_general)"
)
