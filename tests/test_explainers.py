"""Explainers are hashable values: equal by name and options, so fresh ones share compiles.

Compilations are counted with a ``jax.monitoring`` listener on the backend-compile event
(recorded once per XLA compilation; cache hits record nothing).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import explainers
from jaxlrp.errors import ExplanationError
from jaxlrp.metrics import avg_sensitivity, random_logit
from jaxlrp.models.vgg import VGG
from jaxlrp.typing import Explainer as ExplainerProtocol

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COMPILES: list[str] = []


def _listener(event: str, duration: float, **kwargs) -> None:
    if event == COMPILE_EVENT:
        _COMPILES.append(str(kwargs.get("fun_name")))


jax.monitoring.register_event_duration_secs_listener(_listener)


@pytest.fixture(scope="module")
def setup():
    model = VGG(num_classes=5, widths=(4, 8), dense=(16,), input_size=16, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    y = np.array([0, 3], np.int32)
    return model, x, y


def test_equal_values_equal_hashes():
    a, b = explainers.get("gradcam"), explainers.get("gradcam")
    assert a == b and hash(a) == hash(b) and a is not b
    assert explainers.get("gradcam_pp") == explainers.get("GradCAM++")  # alias, any case
    assert explainers.get("gradcam_pp").name == "gradcam++"
    assert explainers.get("lrp", composite="epsilon_plus", reduce="sum") == explainers.get(
        "lrp", reduce="sum", composite="epsilon_plus")  # option order does not matter
    assert explainers.get("lrp", composite="epsilon_plus") != explainers.get("lrp")
    assert explainers.get("gradcam") != explainers.get("layercam")
    assert len({explainers.get("hybrid", threshold=0.3), explainers.get("hybrid", threshold=0.3),
                explainers.get("hybrid")}) == 2
    assert isinstance(explainers.get("hybrid"), ExplainerProtocol)


def test_composite_options_compare_by_value():
    # composites are hashable values (jaxlrp._cache): equal composites, equal explainers
    comp = jaxlrp.composites.layer_map(conv=jaxlrp.rules.ZPlus(), paths={"head": None})
    same = jaxlrp.composites.layer_map(conv=jaxlrp.rules.ZPlus(), paths={"head": None})
    e1 = explainers.get("lrp", composite=comp)
    assert e1 == explainers.get("lrp", composite=same) and hash(e1) == hash(
        explainers.get("lrp", composite=same))
    other = jaxlrp.composites.layer_map(conv=jaxlrp.rules.Gamma(0.25), paths={"head": None})
    assert e1 != explainers.get("lrp", composite=other)


def test_unhashable_options_compare_by_identity():
    canon = [jaxlrp.canonizers.merge_batchnorm]  # a list: unhashable
    e1 = explainers.get("lrp", canonizers=canon)
    assert e1 == explainers.get("lrp", canonizers=canon) and hash(e1) == hash(
        explainers.get("lrp", canonizers=canon))
    assert e1 != explainers.get("lrp", canonizers=[jaxlrp.canonizers.merge_batchnorm])


def test_values_compute_the_functions(setup):
    model, x, y = setup
    np.testing.assert_allclose(explainers.get("gradcam_pp", eps=1e-5)(model, x, y),
                               jaxlrp.gradcam_pp(model, x, y, eps=1e-5), atol=1e-6)
    np.testing.assert_allclose(explainers.get("scorecam", chunk_size=4)(model, x, y),
                               jaxlrp.scorecam(model, x, y, chunk_size=7), atol=1e-5)
    np.testing.assert_allclose(explainers.get("hybrid", threshold=0.3)(model, x, y),
                               jaxlrp.hybrid(model, x, y, threshold=0.3), atol=1e-6)


def test_unknown_names_and_options_raise():
    with pytest.raises(ExplanationError, match=r"explainer: unknown name 'gradcam\+'"):
        explainers.get("gradcam+")
    with pytest.raises(ExplanationError, match="eps: not an option of the explainer 'gradcam'"):
        explainers.get("gradcam", eps=1e-3)
    with pytest.raises(ExplanationError, match="sigma2: not an option of the explainer 'hybrid'"):
        explainers.get("hybrid", sigma2=1.0)
    with pytest.raises(ExplanationError, match="chunk_size: expected"):
        explainers.get("scorecam", chunk_size=0)


@pytest.mark.slow
def test_fresh_explainer_per_metric_call_compiles_once(setup):
    """Before: every ``explainers.get`` built a new closure, a new static jit argument of
    the metric's core, so 3 calls compiled 3 times. Now: one compile for all calls."""
    model, x, y = setup
    a = explainers.get("gradcam")(model, x, y)
    key = jax.random.key(0)
    jax.block_until_ready(avg_sensitivity(model, x, y, a, explainers.get("gradcam"), key,
                                          nr_samples=2))
    first = len(_COMPILES)
    for i in range(3):
        s = avg_sensitivity(model, x, y, a, explainers.get("gradcam"), jax.random.key(i),
                            nr_samples=2)
        jax.block_until_ready(s)
    assert _COMPILES[first:] == [], _COMPILES[first:]
    # an alias is the same value: no compile either; another option value compiles once
    jax.block_until_ready(random_logit(model, x, y, a, explainers.get("gradcam"), key,
                                       similarity="pearson"))
    first = len(_COMPILES)
    for name in ("gradcam", "GRADCAM", "gradcam"):
        jax.block_until_ready(random_logit(model, x, y, a, explainers.get(name), key,
                                           similarity="pearson"))
    assert _COMPILES[first:] == [], _COMPILES[first:]
