"""Model-based metrics (faithfulness, robustness, randomisation) on tiny Flax models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from jaxlrp._tracing import as_adapter
from jaxlrp.errors import ExplanationError
from jaxlrp.metrics import (
    avg_sensitivity,
    curve_auc,
    default_suite,
    faithfulness_correlation,
    local_lipschitz_estimate,
    max_sensitivity,
    model_parameter_randomisation,
    monotonicity,
    parameter_layers,
    pixel_flipping,
    random_logit,
    region_perturbation,
)
from jaxlrp.metrics._common import ssim

B, H, W, C, K = 3, 8, 8, 3, 5


class TinyCNN(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(C, 4, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.d = nnx.Linear(4 * (H // 2) * (W // 2), K, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.c1(x))
        x = nnx.relu(self.c2(x))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        return self.d(x.reshape(x.shape[0], -1))


class Linear(nnx.Module):
    def __init__(self, w):
        self.w = nnx.Param(jnp.asarray(w))

    def __call__(self, x):
        s = (x * self.w[...]).reshape(x.shape[0], -1).sum(-1)
        return jnp.stack([s, -s], axis=-1)


class TinyLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(K)(x.mean((1, 2)))


def grad_x_input(model, x, target):
    ad = as_adapter(model)
    def out(xx):
        return jnp.take_along_axis(ad.apply(ad.params, xx), target[:, None], 1).sum()

    g = jax.grad(out)(x)
    return (g * x).sum(-1)


def identity_map(model, x, target):
    return x.sum(-1)


@pytest.fixture(scope="module")
def setup():
    model = TinyCNN(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((B, H, W, C)), jnp.float32)
    y = jnp.asarray([0, 1, 2], jnp.int32)
    a = grad_x_input(model, x, y)
    return model, x, y, a


def _logit(model, x, y):
    ad = as_adapter(model)
    return np.asarray(jnp.take_along_axis(ad.apply(ad.params, x), y[:, None], 1)[:, 0])


# ----------------------------------------------------------------------------- faithfulness


@pytest.mark.slow
def test_faithfulness_correlation_matches_loop_reference(setup):
    model, x, y, a = setup
    rng = np.random.default_rng(1)
    n = H * W * C
    idx = np.stack([np.stack([rng.choice(n, 20, replace=False) for _ in range(6)])
                    for _ in range(B)])
    got = np.asarray(faithfulness_correlation(model, x, y, a, indices=idx, chunk_size=2))
    an = np.asarray(a) / np.abs(np.asarray(a)).reshape(B, -1).max(1)[:, None, None]
    af = np.broadcast_to(an[..., None], x.shape).reshape(B, -1)
    y0 = _logit(model, x, y)
    xn = np.asarray(x).reshape(B, -1)
    for i in range(B):
        deltas, sums = [], []
        for r in range(6):
            xp = xn[i].copy()
            xp[idx[i, r]] = xn[i].min()
            deltas.append(y0[i] - _logit(model, jnp.asarray(xp.reshape(1, H, W, C)), y[i:i + 1])[0])
            sums.append(af[i, idx[i, r]].sum())
        np.testing.assert_allclose(got[i], np.corrcoef(sums, deltas)[0, 1], atol=1e-5)


def test_faithfulness_correlation_key(setup):
    model, x, y, a = setup
    k = jax.random.key(0)
    s1 = faithfulness_correlation(model, x, y, a, k, nr_runs=5, subset_size=16)
    s2 = faithfulness_correlation(model, x, y, a, k, nr_runs=5, subset_size=16)
    s3 = faithfulness_correlation(model, x, y, a, jax.random.key(1), nr_runs=5, subset_size=16)
    np.testing.assert_array_equal(s1, s2)
    assert not np.allclose(s1, s3)
    assert s1.shape == (B,) and np.all(np.abs(np.asarray(s1)) <= 1)
    # constant map: att sums are constant -> documented 0
    const = faithfulness_correlation(model, x, y, jnp.ones((B, H, W)), k, nr_runs=5,
                                     subset_size=16)
    np.testing.assert_array_equal(np.asarray(const), 0.0)


def test_faithfulness_correlation_bad_args(setup):
    model, x, y, a = setup
    k = jax.random.key(0)
    with pytest.raises(ExplanationError, match="subset_size"):
        faithfulness_correlation(model, x, y, a, k, subset_size=H * W)
    with pytest.raises(ExplanationError, match="nr_runs"):
        faithfulness_correlation(model, x, y, a, k, nr_runs=0)
    with pytest.raises(ExplanationError, match="similarity"):
        faithfulness_correlation(model, x, y, a, k, similarity="kendall")
    with pytest.raises(ExplanationError, match="key"):
        faithfulness_correlation(model, x, y, a, None, subset_size=16)
    with pytest.raises(ExplanationError, match="a:"):
        faithfulness_correlation(model, x, y, a[:, :4], k, subset_size=16)
    bad = np.asarray(a).copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ExplanationError, match=r"a: contains NaN.*\[1\]"):
        faithfulness_correlation(model, x, y, bad, k, subset_size=16)
    with pytest.raises(ExplanationError, match="perturb_baseline"):
        faithfulness_correlation(model, x, y, a, k, perturb_baseline="purple", subset_size=16)
    with pytest.raises(ExplanationError, match="y"):
        faithfulness_correlation(model, x, jnp.asarray([0, 1, 9]), a, k, subset_size=16)


def test_pixel_flipping_matches_loop_and_endpoints(setup):
    model, x, y, a = setup
    curves = np.asarray(pixel_flipping(model, x, y, a, features_in_step=16, softmax=False,
                                       chunk_size=3))
    assert curves.shape == (B, H * W // 16)
    order = np.argsort(-np.asarray(a).reshape(B, -1), axis=1, kind="stable")
    xn = np.asarray(x).reshape(B, H * W, C)
    for step in range(curves.shape[1]):
        xp = xn.copy()
        for i in range(B):
            xp[i, order[i, : 16 * (step + 1)]] = xn[i].min()
        ref = _logit(model, jnp.asarray(xp.reshape(B, H, W, C)), y)
        np.testing.assert_allclose(curves[:, step], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(curve_auc(curves)), np.trapezoid(curves, axis=1),
                               rtol=1e-6)


def test_pixel_flipping_explicit_order_and_channel_maps(setup):
    model, x, y, a = setup
    a3 = jnp.asarray(np.random.default_rng(2).random((B, H, W, C)), jnp.float32)
    c1 = pixel_flipping(model, x, y, a3, features_in_step=32)
    order = jnp.argsort(-a3.reshape(B, -1), axis=1)
    c2 = pixel_flipping(model, x, y, jnp.zeros_like(a3), features_in_step=32, order=order)
    np.testing.assert_allclose(c1, c2, rtol=1e-6)
    assert c1.shape == (B, H * W * C // 32)
    with pytest.raises(ExplanationError, match="features_in_step"):
        pixel_flipping(model, x, y, a, features_in_step=7)
    with pytest.raises(ExplanationError, match="order"):
        pixel_flipping(model, x, y, a, order=order[:, :5])


def test_monotonicity_follows_paper_on_linear_model():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((2, H, W, C)) + 0.1, jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    w_pos = jnp.asarray(rng.random((H, W, C)) + 0.1, jnp.float32)
    a = (w_pos * (x - x.reshape(2, -1).min(1)[:, None, None, None])).sum(-1)
    # positive weights: every insertion raises the logit -> monotone
    out = monotonicity(Linear(w_pos), x, y, a, features_in_step=8, softmax=False)
    np.testing.assert_array_equal(np.asarray(out), 1.0)
    # mixed-sign weights: inserting a negative contribution lowers it -> not monotone
    # (Quantus 0.6.0 never changes the input here and would report True)
    w_mix = w_pos * jnp.where(jnp.arange(H * W * C).reshape(H, W, C) % 2 == 0, 1.0, -1.0)
    out = monotonicity(Linear(w_mix), x, y, a, features_in_step=8, softmax=False)
    np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.slow
def test_region_perturbation(setup):
    model, x, y, a = setup
    r = np.asarray(region_perturbation(model, x, y, a, patch_size=3, softmax=False))
    # 8x8 padded to 9x9 -> 9 patches; regions_evaluation=100 is clipped to 9
    assert r.shape == (B, 9)
    xb = jnp.broadcast_to(x.reshape(B, -1).min(1)[:, None, None, None], x.shape)
    np.testing.assert_allclose(r[:, -1], _logit(model, x, y) - _logit(model, xb, y), rtol=1e-5,
                               atol=1e-5)
    rr = region_perturbation(model, x, y, a, jax.random.key(0), patch_size=4, order="random")
    assert rr.shape == (B, 4)
    with pytest.raises(ExplanationError, match="order"):
        region_perturbation(model, x, y, a, order="up")


# ----------------------------------------------------------------------------- robustness


def test_sensitivity_closed_form_with_identity_explainer(setup):
    model, x, y, _ = setup
    a = identity_map(model, x, y)
    noise = np.random.default_rng(0).uniform(-0.2, 0.2, (4,) + x.shape).astype(np.float32)
    ref = np.linalg.norm(noise.sum(-1).reshape(4, B, -1), axis=-1) / np.linalg.norm(
        np.asarray(a).reshape(B, -1), axis=-1)
    avg = avg_sensitivity(model, x, y, a, identity_map, noise=noise, chunk_size=3)
    mx = max_sensitivity(model, x, y, a, identity_map, noise=noise)
    np.testing.assert_allclose(avg, ref.mean(0), rtol=1e-5)
    np.testing.assert_allclose(mx, ref.max(0), rtol=1e-5)
    lip = local_lipschitz_estimate(model, x, y, a, identity_map, noise=noise, normalise=False)
    ref_l = np.linalg.norm(noise.sum(-1).reshape(4, B, -1), axis=-1) / (
        np.linalg.norm(noise.reshape(4, B, -1), axis=-1) + 1e-10)
    np.testing.assert_allclose(lip, ref_l.max(0), rtol=1e-5)


@pytest.mark.slow
def test_sensitivity_random_and_degenerate(setup):
    model, x, y, a = setup
    k = jax.random.key(0)
    s = avg_sensitivity(model, x, y, a, grad_x_input, k, nr_samples=3)
    assert s.shape == (B,) and np.all(np.asarray(s) > 0)
    np.testing.assert_array_equal(s, avg_sensitivity(model, x, y, a, grad_x_input, k,
                                                     nr_samples=3))
    zero = avg_sensitivity(model, x, y, a, grad_x_input, k, nr_samples=2, lower_bound=0.0)
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)
    # all-zero map and explainer: documented 0, not NaN
    zmap = lambda m, xx, t: jnp.zeros(xx.shape[:3])
    np.testing.assert_array_equal(
        avg_sensitivity(model, x, y, jnp.zeros((B, H, W)), zmap, k, nr_samples=2), 0.0)
    with pytest.raises(ExplanationError, match="explain"):
        avg_sensitivity(model, x, y, a, None, k)
    with pytest.raises(ExplanationError, match="nr_samples"):
        avg_sensitivity(model, x, y, a, grad_x_input, k, nr_samples=0)
    with pytest.raises(ExplanationError, match="norm"):
        avg_sensitivity(model, x, y, a, grad_x_input, k, norm="l7")


# ----------------------------------------------------------------------------- randomisation


@pytest.mark.slow
def test_ssim_properties():
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.random((2, 10, 12)), jnp.float32)
    np.testing.assert_allclose(ssim(m, m), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ssim(m, m[::-1]), ssim(m[::-1], m), rtol=1e-6)
    assert np.all(np.asarray(ssim(m, m[:, ::-1])) < 0.5)
    np.testing.assert_array_equal(ssim(jnp.ones((1, 8, 8)), jnp.ones((1, 8, 8))), 1.0)


def test_random_logit(setup):
    model, x, y, a = setup
    k = jax.random.key(0)
    # a target-independent explainer gives identical maps: similarity 1
    np.testing.assert_allclose(random_logit(model, x, y, identity_map(model, x, y), identity_map,
                                            k), 1.0, rtol=1e-5)

    def onehot_at_target(m, xx, t):
        return jax.nn.one_hot(t, H * W).reshape(-1, H, W)

    a1 = onehot_at_target(model, x, y)
    for seed in range(5):  # the off-class always differs from y: correlation -1/(n-1)
        s = random_logit(model, x, y, a1, onehot_at_target, jax.random.key(seed),
                         similarity="pearson")
        np.testing.assert_allclose(s, -1 / (H * W - 1), rtol=1e-4)
    s = random_logit(model, x, y, a, grad_x_input, k)
    assert s.shape == (B,) and np.all(np.isfinite(np.asarray(s)))
    # an explicit off-class: the score is the Pearson correlation of the two maps, recomputed
    # here in numpy (Pearson is blind to the per-example max-|a| normalisation)
    y_off = jnp.asarray([1, 2, 3])
    s = random_logit(model, x, y, a, grad_x_input, y_off=y_off, similarity="pearson")
    off = np.asarray(grad_x_input(model, x, y_off))
    ref = [np.corrcoef(np.asarray(a)[i].ravel(), off[i].ravel())[0, 1] for i in range(B)]
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-5)
    assert np.all(np.abs(np.asarray(ref)) < 0.999)  # the off-class maps really differ
    with pytest.raises(ExplanationError, match="y_off"):
        random_logit(model, x, y, a, grad_x_input, y_off=y)
    with pytest.raises(ExplanationError, match="similarity"):
        random_logit(model, x, y, a, grad_x_input, k, similarity="cosine")


@pytest.mark.slow
def test_mprt(setup):
    model, x, y, a = setup
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    layers = parameter_layers(model, x)
    assert layers == ["d", "c2", "c1"]
    k = jax.random.key(0)
    casc = np.asarray(model_parameter_randomisation(model, x, y, grad_x_input, k))
    ind = np.asarray(model_parameter_randomisation(model, x, y, grad_x_input, k,
                                                   mode="independent"))
    assert casc.shape == ind.shape == (B, 3)
    np.testing.assert_allclose(casc[:, 0], ind[:, 0], rtol=1e-6)
    assert np.all(casc < 0.999)
    # a parameter-independent explainer is unaffected: similarity 1
    same = model_parameter_randomisation(model, x, y, identity_map, k, similarity="ssim")
    np.testing.assert_allclose(same, 1.0, rtol=1e-5)
    after = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    with pytest.raises(ExplanationError, match="mode"):
        model_parameter_randomisation(model, x, y, grad_x_input, k, mode="bottom_up")


@pytest.mark.slow
def test_linen_model_and_jit_cache():
    mod = TinyLinen()
    x = jnp.asarray(np.random.default_rng(0).random((2, H, W, C)), jnp.float32)
    v = mod.init(jax.random.key(0), x)
    y = jnp.asarray([0, 3], jnp.int32)
    a = grad_x_input((mod, v), x, y)
    s = faithfulness_correlation((mod, v), x, y, a, jax.random.key(0), nr_runs=4, subset_size=8)
    assert s.shape == (2,) and np.all(np.isfinite(np.asarray(s)))
    m = model_parameter_randomisation((mod, v), x, y, grad_x_input, jax.random.key(0))
    assert m.shape == (2, 2)


def test_default_suite(setup):
    model, x, y, a = setup
    masks = np.zeros((B, H, W), bool)
    masks[:, 2:6, 2:6] = True
    suite = default_suite()
    assert [m.category for m in suite] == ["Faithfulness", "Robustness", "Complexity",
                                          "Localisation", "Randomisation"]
    assert [m.name for m in suite] == ["FaithfulnessCorrelation", "AvgSensitivity", "Sparseness",
                                      "RelevanceRankAccuracy", "RandomLogit"]
    for m in suite:
        if m.name == "FaithfulnessCorrelation":  # subset_size=224 needs > 224 pixels
            continue
        s = m.fn(model, x, y, a, explain=grad_x_input, masks=masks, key=jax.random.key(0))
        assert s.shape == (B,) and np.all(np.isfinite(np.asarray(s))), m.name
    with pytest.raises(ExplanationError, match="masks"):
        suite[3].fn(model, x, y, a)
    with pytest.raises(ExplanationError, match="explain"):
        suite[1].fn(model, x, y, a, key=jax.random.key(0))
    with pytest.raises(ExplanationError, match="subset_size"):
        suite[0].fn(model, x, y, a, key=jax.random.key(0))


@pytest.mark.parametrize("n,k", [(64, 8), (12288, 224), (20, 7)], ids=["sparse", "fc", "dense"])
def test_random_subsets_are_distinct_and_uniform(n, k):
    """Distinct values in range; each value (and each value in first place) equally likely:
    chi-square over many rows, p > 1e-3 (fixed key, so deterministic)."""
    from scipy import stats

    from jaxlrp.metrics._common import random_subsets

    rows = 20000 if n < 1000 else 400
    idx = np.asarray(random_subsets(jax.random.key(3), (rows // 4, 4), n, k)).reshape(rows, k)
    assert idx.dtype == np.int32 and idx.min() >= 0 and idx.max() < n
    assert all(len(set(r)) == k for r in idx)
    counts = np.bincount(idx.ravel(), minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-3
    if n < 1000:
        assert stats.chisquare(np.bincount(idx[:, 0], minlength=n)).pvalue > 1e-3
    again = np.asarray(random_subsets(jax.random.key(3), (rows // 4, 4), n, k)).reshape(rows, k)
    np.testing.assert_array_equal(idx, again)
