"""docs/metrics.md's example metric (Quantus's Infidelity) runs as written, is registered
and scores a perfect explanation of a linear model 0. (tests/crosscheck/
test_infidelity_quantus.py compares it with Quantus.)"""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
B, H, W, C, K = 3, 8, 8, 3, 4


def _example_source() -> str:
    text = DOC.read_text()
    marker = text.index("<!-- infidelity-example")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert block is not None
    return block.group(1)


class Linear(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(H * W * C, K, rngs=rngs)

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


@pytest.fixture
def infidelity():
    src = _example_source()
    assert len(src.splitlines()) < 30  # the docs promise "under 30 lines"
    namespace: dict = {}
    exec(compile(src, str(DOC), "exec"), namespace)
    yield namespace["infidelity"]
    metrics.unregister("Infidelity")


@pytest.fixture(scope="module")
def data():
    model = Linear(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (B, H, W, C)).astype(np.float32)
    y = np.array([0, 3, 1], np.int32)
    kernel = np.asarray(model.fc.kernel.get_value())  # (H*W*C, K), NHWC flattening
    exact = kernel[:, y].T.reshape(B, H, W, C)  # d logit_y / d x: a perfect explanation
    return model, x, y, exact


def test_example_metric_is_registered_and_scores_a_perfect_explanation_zero(infidelity, data):
    model, x, y, exact = data
    m = metrics.get("Infidelity")
    assert (m.category, m.higher_is_better, m.needs) == ("Faithfulness", False, ())
    perfect = np.asarray(m(model, x, y, exact))
    assert perfect.shape == (B,)
    logit_scale = float(np.abs(np.asarray(model(jnp.asarray(x)))).max())
    assert np.all(perfect < 1e-8 * max(1.0, logit_scale) ** 2), perfect
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(exact.reshape(B, -1), axis=1).reshape(exact.shape)
    assert np.all(np.asarray(infidelity(model, x, y, shuffled)) > 1e-3)
    # through evaluate, by name, with a dict explainer returning the exact gradient
    res = jaxlrp.evaluate(model, [(x, y, None)], {"exact": lambda mod, xx, t: jnp.asarray(
        exact)}, metrics=["Infidelity"], progress=False, chart=False)
    np.testing.assert_allclose(res.scores["exact"]["Infidelity"], perfect, atol=1e-9)
