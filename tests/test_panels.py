"""jaxlrp.explain_panels: the CAM | LRP | hybrid panels of the CLI and the demo, one pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import explainers
from jaxlrp._hybrid import hybrid
from jaxlrp._image import max_abs_normalize
from jaxlrp.models import VGG
from jaxlrp.panels import Panels, explain_panels


@pytest.fixture(scope="module")
def model_x():
    model = VGG(num_classes=3, widths=(4, 8), dense=(8,), input_size=16, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    return model, x


@pytest.mark.slow
def test_panels_equal_the_library_explainers(model_x):
    model, x = model_x
    p = explain_panels(model, x, composite="epsilon_plus_flat")
    assert isinstance(p, Panels) and jaxlrp.explain_panels is explain_panels
    assert list(p.maps()) == ["gradcam++", "lrp", "hybrid"]
    np.testing.assert_allclose(p.logits, model(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.hybrid, hybrid(model, x, composite="epsilon_plus_flat"),
                               atol=1e-6)
    parts = hybrid(model, x, composite="epsilon_plus_flat", return_parts=True)
    np.testing.assert_allclose(p.cam, parts.cam, atol=1e-6)
    # the LRP panel is the ``lrp`` explainer's map (same composite), not a re-normalisation
    lrp = explainers.get("lrp", composite="epsilon_plus_flat")(model, x)
    np.testing.assert_allclose(p.lrp, lrp, atol=1e-5)
    assert float(jnp.max(jnp.abs(p.lrp))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_panels_jit_and_other_cam(model_x):
    model, x = model_x
    eager = explain_panels(model, x, 1, cam="layercam")
    jitted = jax.jit(lambda m, x: explain_panels(m, x, 1, cam="layercam"))(model, x)
    assert list(jitted.maps()) == ["layercam", "lrp", "hybrid"]
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_max_abs_normalize_keeps_zero_and_subnormal_maps():
    maps = jnp.asarray([[[-2.0, 1.0], [0.0, 0.0]],
                        [[0.0, 0.0], [0.0, 0.0]],
                        [[1e-40, -1e-40], [0.0, 0.0]]], jnp.float32)
    out = np.asarray(max_abs_normalize(maps))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], [[-1.0, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[2], np.asarray(maps[2]))  # subnormal: unchanged
