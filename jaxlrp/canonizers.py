"""LRP canonizers: graph rewrites that keep the model's function (public namespace of
:mod:`jaxlrp._lrp.canonizers`)."""

from jaxlrp._lrp.canonizers import Canonizer, apply_all, default, merge_batchnorm

__all__ = ["Canonizer", "apply_all", "default", "merge_batchnorm"]
