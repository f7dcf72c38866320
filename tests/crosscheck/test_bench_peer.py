"""The benchmarks' peer explainer (benchmarks/_common.py): safe on degenerate maps and
equal to the validated crosscheck pipeline (test_hybrid_peers.py) elsewhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_hybrid_peers import _setup
from test_hybrid_peers import peer_hybrid as validated_peer_hybrid

from jaxlrp._hybrid import combine
from jaxlrp.twins import to_torch, to_torch_input

pytestmark = pytest.mark.crosscheck

_spec = importlib.util.spec_from_file_location(
    "bench_common", Path(__file__).resolve().parents[2] / "benchmarks" / "_common.py")
U = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(U)


def test_peer_combine_is_finite_in_unit_range_on_degenerate_maps():
    rng = np.random.default_rng(0)
    cam = rng.random((5, 16, 16)).astype(np.float32)
    rel = rng.standard_normal((5, 16, 16)).astype(np.float32)
    rel[0] = 0.0  # all-zero relevance
    rel[1] = -np.abs(rel[1]) - 0.1  # all-negative relevance
    cam[2] = 0.15  # CAM below the threshold everywhere: product is zero
    rel[3] = np.where(cam[3] > 0.2, -np.abs(rel[3]), np.abs(rel[3]))  # product <= 0
    out = U.peer_combine(cam, rel)
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    assert np.all(out[:4] == 0)  # no evidence: zero maps, not NaN or inverted ones
    assert out[4].max() == 1.0
    # the same as jaxlrp's validated steps 2-5, degenerate maps included
    np.testing.assert_allclose(out, combine(jnp.asarray(cam), jnp.asarray(rel)), atol=2e-6)


def test_bench_peer_hybrid_equals_the_crosscheck_pipeline():
    model, x, targets = _setup(0)
    twin = to_torch(model)
    relus = [m for m in twin.features if isinstance(m, torch.nn.ReLU)]
    ours = U.peer_hybrid(twin, to_torch_input(np.asarray(x)), targets, relus[-1])
    ref = validated_peer_hybrid(to_torch(model), x, targets)
    assert np.all(ref.max(axis=(1, 2)) == 1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
