"""jaxlrp: Grad-CAM, LRP and their hybrid for Flax models, with a JAX evaluation suite."""

from jaxlrp.errors import ExplanationError, UnsupportedOperationError
from jaxlrp.tracing import LinenModel, layers, linen

__version__ = "0.1.0"

__all__ = [
    "ExplanationError",
    "UnsupportedOperationError",
    "LinenModel",
    "layers",
    "linen",
]
