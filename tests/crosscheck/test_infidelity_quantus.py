"""docs/metrics.md's example metric (Quantus's Infidelity) against Quantus 0.6.0 itself,
on the same linear model ported to torch (NCHW in, same NHWC-flattened weights)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import quantus
import torch
from flax import nnx

from jaxlrp import metrics

pytestmark = pytest.mark.crosscheck

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
B, H, W, C, K = 3, 8, 8, 3, 4


class Linear(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(H * W * C, K, rngs=rngs)

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


@pytest.fixture
def infidelity():
    text = DOC.read_text()
    block = re.search(r"```python\n(.*?)```", text[text.index("<!-- infidelity-example"):], re.S)
    namespace: dict = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    yield namespace["infidelity"]
    metrics.unregister("Infidelity")


@pytest.fixture
def data():
    model = Linear(nnx.Rngs(0))
    x = np.random.default_rng(0).uniform(-1, 1, (B, H, W, C)).astype(np.float32)
    return model, x, np.array([0, 3, 1], np.int32), None


def test_example_metric_matches_quantus(infidelity, data):
    model, x, y, _ = data
    kernel = np.asarray(model.fc.kernel.get_value())
    bias = np.asarray(model.fc.bias.get_value())

    class TorchLinear(torch.nn.Module):  # NCHW in, the same NHWC-flattened linear layer
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(H * W * C, K)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(kernel.T))
                self.fc.bias.copy_(torch.from_numpy(bias))

        def forward(self, xt):
            return self.fc(xt.permute(0, 2, 3, 1).reshape(xt.shape[0], -1))

    a = np.random.default_rng(2).uniform(-1, 1, (B, H, W, C)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1,
                                 disable_warnings=True)(
            model=TorchLinear().eval(), x_batch=x.transpose(0, 3, 1, 2), y_batch=y,
            a_batch=a.transpose(0, 3, 1, 2), device="cpu", softmax=False)
    ours = np.asarray(infidelity(model, x, y, a, patch_size=4))
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-4)
    assert ours.min() > 1e-3  # a random map is far from faithful: the check is not vacuous
