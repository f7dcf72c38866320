"""Complexity and localisation metrics on hand-built maps with closed-form scores."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlrp.errors import ExplanationError
from jaxlrp.metrics import (
    attribution_localisation,
    auc,
    complexity,
    effective_complexity,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    sparseness,
    top_k_intersection,
)

H = W = 8
N = H * W


def onehot(b=2, i=5, j=3):
    a = np.zeros((b, H, W), np.float32)
    a[:, i, j] = 1.0
    return a


def square_mask(b=2, lo=2, hi=5):
    m = np.zeros((b, H, W), bool)
    m[:, lo:hi, lo:hi] = True
    return m


# ----------------------------------------------------------------------------- complexity


def test_gini_onehot_and_uniform():
    # Quantus's formula sum((2i-n-1) a_i) / (n sum a) gives (n-1)/n for a one-hot map,
    # shifted by the 1e-7 it adds to every value: (n-1)/n * 1/(1 + n*1e-7).
    g = np.asarray(sparseness(onehot()))
    expect = (N - 1) / N / (1 + N * 1e-7)
    np.testing.assert_allclose(g, expect, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sparseness(np.ones((2, H, W)))), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sparseness(np.zeros((2, H, W)))), 0.0, atol=1e-6)


def test_gini_two_level_closed_form():
    # k pixels of value 1, rest 0 (no offset effect at this tolerance): G = 1 - k/n.
    a = np.zeros((1, H, W), np.float32)
    a.reshape(-1)[:16] = 1
    np.testing.assert_allclose(np.asarray(sparseness(a)), 1 - 16 / N, atol=1e-4)


def test_entropy_uniform_and_onehot():
    np.testing.assert_allclose(np.asarray(complexity(np.ones((2, H, W)))), math.log(N), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(complexity(onehot())), 0.0, atol=1e-5)
    # all-zero map: documented value 0 (not NaN)
    np.testing.assert_array_equal(np.asarray(complexity(np.zeros((1, H, W)))), [0.0])


def test_effective_complexity_counts():
    a = np.zeros((1, H, W), np.float32)
    a.reshape(-1)[:10] = np.linspace(0.1, 1.0, 10)
    assert int(effective_complexity(a)[0]) == 10
    assert int(effective_complexity(a, eps=0.55)[0]) == 5


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 100.0))
def test_complexity_scale_invariant(seed, s):
    a = np.random.default_rng(seed).random((2, H, W, 3)).astype(np.float32)
    for f in (sparseness, complexity):
        np.testing.assert_allclose(np.asarray(f(a)), np.asarray(f(a * s)), rtol=1e-4, atol=1e-6)


def test_complexity_jit():
    a = jnp.asarray(np.random.default_rng(0).random((3, H, W)), jnp.float32)
    np.testing.assert_allclose(jax.jit(sparseness)(a), sparseness(a), rtol=1e-6)


# ----------------------------------------------------------------------------- localisation


def test_pointing_game_hit_and_miss():
    m = square_mask()
    assert np.asarray(pointing_game(onehot(i=3, j=3), m)).tolist() == [1.0, 1.0]
    assert np.asarray(pointing_game(onehot(i=7, j=7), m)).tolist() == [0.0, 0.0]


def test_mass_accuracy_inside_and_half():
    m = square_mask()
    a = np.where(m, 0.5, 0.0).astype(np.float32)
    np.testing.assert_allclose(np.asarray(relevance_mass_accuracy(a, m)), 1.0)
    np.testing.assert_allclose(np.asarray(attribution_localisation(a, m)), 1.0, atol=1e-6)
    a2 = a.copy()
    a2[:, 7, 7] = a.sum(axis=(1, 2))  # same mass outside
    np.testing.assert_allclose(np.asarray(relevance_mass_accuracy(a2, m)), 0.5, rtol=1e-6)
    # constant map: |mask| / n; zero map: 0 (documented)
    np.testing.assert_allclose(np.asarray(relevance_mass_accuracy(np.ones((2, H, W)), m)), 9 / N,
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(relevance_mass_accuracy(np.zeros((2, H, W)), m)), 0)


def test_rank_accuracy():
    m = square_mask()  # 9 pixels
    rng = np.random.default_rng(0)
    a = rng.random((2, H, W)).astype(np.float32) * 0.5
    a[m] += 1.0  # all mask pixels rank on top
    np.testing.assert_allclose(np.asarray(relevance_rank_accuracy(a, m)), 1.0)
    b = a.copy()
    b[0, 0, :3] = 5.0  # 3 outside pixels outrank the mask: 6 of the top 9 inside
    np.testing.assert_allclose(np.asarray(relevance_rank_accuracy(b, m))[0], 6 / 9, rtol=1e-6)
    # constant map: every ranking equally likely -> expected |mask| / n
    np.testing.assert_allclose(np.asarray(relevance_rank_accuracy(np.ones((2, H, W)), m)), 9 / N,
                               rtol=1e-6)


def test_top_k_intersection():
    m = square_mask()
    a = np.where(m, 1.0, 0.0).astype(np.float32) + np.random.default_rng(1).random((2, H, W)) * .1
    np.testing.assert_allclose(np.asarray(top_k_intersection(a, m, k=9)), 1.0)
    np.testing.assert_allclose(np.asarray(top_k_intersection(a, m, k=18)), 0.5)
    with pytest.raises(ExplanationError, match="k"):
        top_k_intersection(a, m, k=N)


def test_auc_perfect_random_and_ties():
    m = square_mask()
    a = np.where(m, 1.0, 0.0).astype(np.float32)
    np.testing.assert_allclose(np.asarray(auc(a, m)), 1.0)
    np.testing.assert_allclose(np.asarray(auc(-a, m)), 0.0)
    np.testing.assert_allclose(np.asarray(auc(np.ones((2, H, W)), m)), 0.5)
    # Mann-Whitney by brute force on random maps
    rng = np.random.default_rng(3)
    r = rng.integers(0, 5, (2, H, W)).astype(np.float32)  # many ties
    for i in range(2):
        pos, neg = r[i][m[i]], r[i][~m[i]]
        u = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum())
        np.testing.assert_allclose(float(auc(r, m)[i]), u / (pos.size * neg.size), rtol=1e-6)


def test_channels_summed_for_localisation():
    m = square_mask()
    a3 = np.random.default_rng(0).random((2, H, W, 3)).astype(np.float32)
    for f in (relevance_rank_accuracy, relevance_mass_accuracy, auc):
        np.testing.assert_allclose(np.asarray(f(a3, m)), np.asarray(f(a3.sum(-1), m)), rtol=1e-6)


def test_localisation_bad_masks():
    a = onehot()
    m = square_mask()
    m[1] = False
    with pytest.raises(ExplanationError, match=r"masks.*\[1\].*empty"):
        relevance_rank_accuracy(a, m)
    with pytest.raises(ExplanationError, match="masks"):
        pointing_game(a, None)
    with pytest.raises(ExplanationError, match="masks"):
        pointing_game(a, np.ones((2, H + 1, W), bool))
    with pytest.raises(ExplanationError, match="whole image"):
        auc(a, np.ones((2, H, W), bool))
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ExplanationError, match=r"a: contains NaN"):
        relevance_mass_accuracy(bad, square_mask())


def test_localisation_traced_empty_mask_is_nan():
    m = square_mask()
    m[1] = False
    a = np.where(square_mask(), 1.0, 0.0) + np.random.default_rng(0).random((2, H, W)) * 0.1
    out = jax.jit(relevance_rank_accuracy)(a.astype(np.float32), m)
    assert float(out[0]) == 1.0 and np.isnan(float(out[1]))


def test_bad_map_shapes():
    with pytest.raises(ExplanationError, match="a:"):
        sparseness(np.zeros((H, W)))
    with pytest.raises(ExplanationError, match="a:"):
        sparseness(np.zeros((0, H, W)))
