"""The one error type jaxlrp raises for bad input."""

from __future__ import annotations


class ExplanationError(ValueError):
    """Bad input to a jaxlrp function.

    The message names the argument, what was received and what was expected.
    It is a ``ValueError`` so that generic handlers keep working.
    """


class UnsupportedOperationError(ExplanationError):
    """The model contains an operation that an explainer cannot handle.

    The message names the JAX primitive and the module path where it occurs.
    """
