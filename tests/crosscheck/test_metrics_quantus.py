"""jaxlrp.metrics against Quantus 0.6.0 on the same model, inputs, explanations and masks.

The model is a tiny CNN built in Flax NNX with a hand-made PyTorch twin (same
weights). Everything runs in float64 on both sides (``jax.enable_x64``; Quantus
casts model inputs to float32, so the images are float32-representable), so
deterministic metrics must agree to 1e-6 absolute (the brief's bar; float64
leaves only summation-order differences far below it). Random metrics are given
the very perturbations Quantus draws: numpy's global RNG is seeded, Quantus's
draws are replayed in the same order (including the ``np.random.uniform`` that
Quantus's ``get_baseline_dict`` consumes on every baseline lookup) and passed to
jaxlrp through ``indices=``, ``noise=`` or ``y_off=``; then the scores must be
equal too.

Quantus normalises attributions by the maximum over the *whole batch*; jaxlrp per
example. Quantus is therefore called one example at a time where normalisation
matters, which is exactly jaxlrp's per-example semantics.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quantus
import torch
from flax import nnx

from jaxlrp import metrics as M
from jaxlrp._tracing import as_adapter

pytestmark = pytest.mark.crosscheck

B, H, W, C, K = 4, 16, 16, 3, 6
TOL = 1e-6  # float64 on both sides; see module docstring

warnings.filterwarnings("ignore")


class Net(nnx.Module):
    def __init__(self, rngs):
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs)
        self.c1 = nnx.Conv(C, 8, (3, 3), **kw)
        self.c2 = nnx.Conv(8, 8, (3, 3), **kw)
        self.d = nnx.Linear(8, K, **kw)

    def __call__(self, x):
        x = nnx.relu(self.c1(x))
        x = nnx.relu(self.c2(x))
        return self.d(x.mean((1, 2)))


class TorchNet(torch.nn.Module):
    def __init__(self, net: Net):
        super().__init__()
        self.c1 = torch.nn.Conv2d(C, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.d = torch.nn.Linear(8, K)
        self.double().eval()  # before copying, so the float64 weights are not rounded
        with torch.no_grad():
            for t, j in ((self.c1, net.c1), (self.c2, net.c2)):
                kernel = np.array(j.kernel[...]).transpose(3, 2, 0, 1).copy()
                t.weight.copy_(torch.from_numpy(kernel))
                t.bias.copy_(torch.from_numpy(np.asarray(j.bias[...])))
            self.d.weight.copy_(torch.from_numpy(np.asarray(net.d.kernel[...]).T))
            self.d.bias.copy_(torch.from_numpy(np.asarray(net.d.bias[...])))

    def forward(self, x):
        # Quantus's predict hands the model torch.Tensor(x), i.e. float32; the inputs below
        # are float32-representable, so casting back loses nothing.
        x = torch.relu(self.c1(x.double()))
        x = torch.relu(self.c2(x))
        return self.d(x.mean((2, 3)))


def jax_explain(model, x, target):
    ad = as_adapter(model)

    def out(xx):
        return jnp.take_along_axis(ad.apply(ad.params, xx), target[:, None], 1).sum()

    return (jax.grad(out)(x) * x).sum(-1)


def torch_explain(model, inputs, targets, **kwargs):
    x = torch.tensor(np.asarray(inputs), dtype=torch.float64, requires_grad=True)
    out = model(x)
    out[torch.arange(len(x)), torch.as_tensor(np.asarray(targets))].sum().backward()
    return (x.grad * x).sum(1).detach().numpy()


@pytest.fixture(scope="module")
def env():
    with jax.enable_x64(True):
        net = Net(nnx.Rngs(0))
        tnet = TorchNet(net)
        rng = np.random.default_rng(0)
        x = rng.random((B, H, W, C)).astype(np.float32).astype(np.float64)
        y = np.array([0, 1, 2, 3])
        a = np.asarray(jax_explain(net, jnp.asarray(x), jnp.asarray(y)))
        masks = np.zeros((B, H, W), bool)
        for i in range(B):
            masks[i, 2 + i: 9 + i, 3: 11 - i] = True
        yield dict(net=net, tnet=tnet, x=x, xc=x.transpose(0, 3, 1, 2), y=y, a=a, masks=masks)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_twin_and_explanations_agree(env):
    with jax.enable_x64(True):
        ad = as_adapter(env["net"])
        lj = np.asarray(ad.apply(ad.params, jnp.asarray(env["x"])))
    lt = env["tnet"](torch.from_numpy(env["xc"])).detach().numpy()
    np.testing.assert_allclose(lj, lt, atol=1e-12)
    np.testing.assert_allclose(env["a"], torch_explain(env["tnet"], env["xc"], env["y"]),
                               atol=1e-12)


def per_example(metric, env, a=None, s=None, **kw):
    """Quantus called one example at a time (per-example normalisation)."""
    a = env["a"] if a is None else a
    out = []
    for i in range(B):
        r = metric(model=env["tnet"], x_batch=env["xc"][i:i + 1], y_batch=env["y"][i:i + 1],
                   a_batch=a[i:i + 1], s_batch=None if s is None else s[i:i + 1, None],
                   channel_first=True, **kw)
        out.append(np.asarray(r, np.float64).reshape(-1))
    return np.concatenate(out)


# ----------------------------------------------------------------------------- map-only


@pytest.mark.parametrize("name", ["sparseness", "complexity", "effective_complexity"])
def test_complexity(env, name):
    q = {"sparseness": quantus.Sparseness, "complexity": quantus.Complexity,
         "effective_complexity": quantus.EffectiveComplexity}[name](disable_warnings=True)
    ref = per_example(q, env)
    got = np.asarray(getattr(M, name)(env["a"]))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


LOCALISATION = {
    "pointing_game": (quantus.PointingGame, {}),
    "attribution_localisation": (quantus.AttributionLocalisation, {}),
    "relevance_mass_accuracy": (quantus.RelevanceMassAccuracy, {}),
    "relevance_rank_accuracy": (quantus.RelevanceRankAccuracy, {}),
    "top_k_intersection": (quantus.TopKIntersection, {"k": 50}),
    "auc": (quantus.AUC, {}),
}


@pytest.mark.parametrize("name", list(LOCALISATION))
def test_localisation(env, name):
    cls, kw = LOCALISATION[name]
    ref = per_example(cls(disable_warnings=True, **kw), env, s=env["masks"])
    got = np.asarray(getattr(M, name)(env["a"], env["masks"], **kw))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)
    # Quantus's batch call (batch-global max normalisation) agrees too: all these
    # scores are invariant to a positive rescaling of the map (up to the 1e-9 offset).
    refb = np.asarray(cls(disable_warnings=True, **kw)(
        model=None, x_batch=env["xc"], y_batch=env["y"], a_batch=env["a"],
        s_batch=env["masks"][:, None], channel_first=True), np.float64)
    np.testing.assert_allclose(got, refb, rtol=0, atol=TOL)


# ----------------------------------------------------------------------------- faithfulness


def test_pixel_flipping_fixed_order(env):
    # Channel-resolved maps with distinct values: the flipping order is fixed (no ties).
    a3 = np.random.default_rng(1).standard_normal((B, H, W, C))
    q = quantus.PixelFlipping(features_in_step=64, disable_warnings=True)
    ref = np.asarray(q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"],
                       a_batch=a3.transpose(0, 3, 1, 2), channel_first=True))
    got = np.asarray(M.pixel_flipping(env["net"], env["x"], env["y"], a3, features_in_step=64))
    assert got.shape == ref.shape == (B, H * W * C // 64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)
    # Quantus's calculate_auc is np.trapz(curve, dx=1), which NumPy 2 removed; np.trapezoid
    # is the same rule under its new name.
    np.testing.assert_allclose(np.asarray(M.curve_auc(got)), np.trapezoid(ref, dx=1, axis=1),
                               atol=TOL)


def test_region_perturbation(env):
    q = quantus.RegionPerturbation(patch_size=4, regions_evaluation=10, disable_warnings=True)
    ref = np.asarray(q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"], a_batch=env["a"],
                       channel_first=True))
    got = np.asarray(M.region_perturbation(env["net"], env["x"], env["y"], env["a"],
                                           patch_size=4, regions_evaluation=10))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_monotonicity_deviation(env):
    # Quantus 0.6.0 never changes the all-baseline image (it "perturbs" it with the same
    # baseline), so every explanation is monotone; jaxlrp puts the features back (Arya et al.).
    rng = np.random.default_rng(2)
    a = rng.random((B, H, W))
    q = quantus.Monotonicity(features_in_step=16, disable_warnings=True)
    ref = q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"], a_batch=a,
            channel_first=True)
    assert all(ref)
    got = np.asarray(M.monotonicity(env["net"], env["x"], env["y"], a, features_in_step=16))
    assert not got.all()


def quantus_fc_indices(seed, nr_runs, subset_size):
    """Replay Quantus's draws; return jaxlrp NHWC flat indices (B, R, S)."""
    np.random.seed(seed)
    n = C * H * W
    runs = []
    for _ in range(nr_runs):
        runs.append(np.stack([np.random.choice(n, subset_size, replace=False) for _ in range(B)]))
        np.random.uniform(0.0, 1.0, size=B)  # consumed by get_baseline_dict
    idx = np.stack(runs, axis=1)  # channel-first flat: c*H*W + h*W + w
    c, rem = np.divmod(idx, H * W)
    return rem * C + c


def test_faithfulness_correlation_same_draws(env):
    idx = quantus_fc_indices(123, 10, 224)
    np.random.seed(123)
    q = quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=224, perturb_baseline="black",
                                        return_aggregate=False, disable_warnings=True)
    ref = np.asarray(q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"], a_batch=env["a"],
                       channel_first=True))
    got = np.asarray(M.faithfulness_correlation(env["net"], env["x"], env["y"], env["a"],
                                                indices=idx))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_faithfulness_correlation_distribution(env):
    # jaxlrp's own draws (jax.random) vs Quantus's (numpy): same distribution of scores.
    n = 30
    ours = np.stack([np.asarray(M.faithfulness_correlation(
        env["net"], env["x"], env["y"], env["a"], jax.random.key(s))) for s in range(n)])
    q = quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=224, return_aggregate=False,
                                        disable_warnings=True)
    theirs = []
    for s in range(n):
        np.random.seed(1000 + s)
        theirs.append(q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"],
                        a_batch=env["a"], channel_first=True))
    theirs = np.asarray(theirs)
    se = np.sqrt(ours.var(0, ddof=1) / n + theirs.var(0, ddof=1) / n)
    # per-example means agree within 4 standard errors (two-sample z-test, 4 examples)
    assert np.all(np.abs(ours.mean(0) - theirs.mean(0)) < 4 * se + 1e-9)


# ----------------------------------------------------------------------------- robustness


def quantus_noise(seed, nr_samples, kind, scale, b=B):
    np.random.seed(seed)
    out = []
    for _ in range(nr_samples):
        if kind == "uniform":
            z = np.random.uniform(low=-scale, high=scale, size=(b, C * H * W))
        else:
            z = np.random.normal(loc=0.0, scale=scale, size=(b, C * H * W))
        out.append(z.reshape(b, C, H, W).transpose(0, 2, 3, 1))
    return np.stack(out)


@pytest.mark.parametrize("name", ["avg_sensitivity", "max_sensitivity"])
def test_sensitivity_same_noise(env, name):
    noise = quantus_noise(7, 10, "uniform", 0.2)
    cls = quantus.AvgSensitivity if name == "avg_sensitivity" else quantus.MaxSensitivity
    q = cls(nr_samples=10, lower_bound=0.2, disable_warnings=True)
    np.random.seed(7)
    ref = np.asarray(q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"], a_batch=env["a"],
                       explain_func=torch_explain, channel_first=True))
    got = np.asarray(getattr(M, name)(env["net"], env["x"], env["y"], env["a"], jax_explain,
                                      noise=noise))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=TOL)


def test_local_lipschitz_same_noise(env):
    q = quantus.LocalLipschitzEstimate(nr_samples=5, disable_warnings=True)
    refs, noises = [], []
    for i in range(B):  # one example per call: per-example normalisation
        noises.append(quantus_noise(11 + i, 5, "gaussian", 0.1, b=1))
        np.random.seed(11 + i)
        refs.append(q(model=env["tnet"], x_batch=env["xc"][i:i + 1], y_batch=env["y"][i:i + 1],
                      a_batch=env["a"][i:i + 1], explain_func=torch_explain, channel_first=True))
    noise = np.concatenate(noises, axis=1)
    got = np.asarray(M.local_lipschitz_estimate(env["net"], env["x"], env["y"], env["a"],
                                                jax_explain, noise=noise))
    np.testing.assert_allclose(got, np.concatenate(refs), rtol=1e-9, atol=TOL)


# ----------------------------------------------------------------------------- randomisation


def test_random_logit_same_class(env):
    q = quantus.RandomLogit(num_classes=K, disable_warnings=True)
    ref = per_example(q, env, explain_func=torch_explain)
    # Quantus seeds numpy with 42 per call and draws the off-class index from [0, K-2].
    y_off = []
    for i in range(B):
        np.random.seed(42)
        r = int(np.random.randint(0, K - 1, 1)[0])
        y_off.append(r + (r >= env["y"][i]))
    got = np.asarray(M.random_logit(env["net"], env["x"], env["y"], env["a"], jax_explain,
                                    y_off=np.asarray(y_off), similarity="ssim_flat"))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_ssim_2d_matches_skimage(env):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    a, b = rng.random((3, H, W)), rng.random((3, H, W))
    b[0] = a[0] + 0.1 * b[0]
    ref = [structural_similarity(a[i], b[i], win_size=7,
                                 data_range=max(a[i].max(), b[i].max()) - min(a[i].min(),
                                                                              b[i].min()))
           for i in range(3)]
    got = np.asarray(M.random_logit.__globals__["similarity_fn"]("ssim")(jnp.asarray(a),
                                                                          jnp.asarray(b)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_mprt_spearman_matches_scipy(env):
    from scipy.stats import spearmanr

    k = jax.random.key(0)
    scores = np.asarray(M.model_parameter_randomisation(env["net"], env["x"], env["y"],
                                                        jax_explain, k, mode="independent"))
    assert scores.shape == (B, 3)
    # Recompute the first column (output layer randomised) by hand with scipy.
    from jaxlrp.metrics._common import model_handle
    from jaxlrp.metrics._randomisation import _randomised

    fwd, params, _ = model_handle(env["net"], jnp.asarray(env["x"]))
    rp = _randomised(fwd, params, ["d"], k, ["d", "c2", "c1"])
    a_r = np.asarray(jax_explain(fwd.model(rp), jnp.asarray(env["x"]), jnp.asarray(env["y"])))
    a0 = np.abs(env["a"])
    for i in range(B):
        rho = spearmanr(a0[i].ravel(), np.abs(a_r[i]).ravel())[0]
        np.testing.assert_allclose(scores[i, 0], rho, atol=TOL)


# ----------------------------------------------------------------------------- MPRT family
# Quantus randomises a layer with torch.manual_seed(seed + 1); module.reset_parameters()
# (the layer's own initialiser). The weights it draws are read from its own generator
# (order "independent": one layer at a time) and replayed in jaxlrp through ``draw=``, so
# both sides explain the very same randomised models.


def quantus_random_weights(tnet, seed=42):
    """{(layer, 'kernel' | 'bias'): array in Flax layout} drawn by Quantus's generator."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    out = {}
    gen = PyTorchModel(tnet, channel_first=True).get_random_layer_generator("independent", seed)
    for name, rmodel in gen:
        mod = dict(rmodel.named_modules())[name]
        wt = mod.weight.detach().double().numpy().copy()  # the generator reloads in place
        out[(name, "kernel")] = wt.transpose(2, 3, 1, 0) if wt.ndim == 4 else wt.T
        out[(name, "bias")] = mod.bias.detach().double().numpy().copy()
    return out


@pytest.fixture(scope="module")
def replay(env):
    weights = quantus_random_weights(env["tnet"])
    assert sorted({k[0] for k in weights}) == ["c1", "c2", "d"]

    def draw(layer, name, value, key):
        w = jnp.asarray(weights[(layer, name)])
        assert w.shape == value.shape, (layer, name)
        return w

    return draw


def test_mprt_matches_quantus_on_the_same_random_weights(env, replay):
    for order, mode in (("top_down", "cascading"), ("independent", "independent")):
        q = quantus.MPRT(layer_order=order, seed=42, disable_warnings=True)
        ref = q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"],
                a_batch=env["a"][:, None], channel_first=True, explain_func=torch_explain)
        ref = np.stack([np.asarray(ref[k]) for k in ("d", "c2", "c1")], axis=1)
        got = np.asarray(M.model_parameter_randomisation(
            env["net"], env["x"], env["y"], jax_explain, jax.random.key(0), mode=mode,
            a=env["a"], draw=replay))
        print(f"[quantus] MPRT {order}: max|diff| = {np.abs(got - ref).max():.1e}")
        assert got.shape == (B, 3) and np.ptp(ref) > 0.1  # scores vary: a real comparison
        np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_efficient_mprt_matches_quantus(env, replay):
    q = quantus.EfficientMPRT(disable_warnings=True)  # bottom-up, all layers, 100 bins
    ref = np.asarray(q(model=env["tnet"], x_batch=env["xc"], y_batch=env["y"],
                       a_batch=env["a"][:, None], channel_first=True,
                       explain_func=torch_explain), np.float64)
    got = np.asarray(M.efficient_mprt(env["net"], env["x"], env["y"], jax_explain,
                                      jax.random.key(0), draw=replay))
    print(f"[quantus] eMPRT: {got}, max|diff| = {np.abs(got - ref).max():.1e}")
    assert got.shape == (B,) and np.all(np.abs(ref) > 1e-3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def test_histogram_entropy_matches_numpy_and_scipy():
    from scipy.stats import entropy

    rng = np.random.default_rng(5)
    a = rng.standard_normal((5, 9, 11))
    a[1] = np.round(a[1], 1)  # many values on bin edges
    a[2] = 3.0  # constant map: numpy's +-0.5 range, one bin
    a[3, :5] = a[3].max()  # several values at the closed last edge
    for n in (1, 7, 100):
        ref = [entropy(np.histogram(a[i], bins=n)[0]) for i in range(5)]
        got = np.asarray(M._randomisation.histogram_entropy(jnp.asarray(a), n))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


SMPRT_SAMPLES = 4
# Quantus's sMPRT explains through quantus.explain (Captum InputXGradient), which hands
# the model float32 inputs: gradients and inputs are float32 on its side, float64 here.
# Maps differ by ~1e-7 relative; two pixels within that of each other could swap ranks,
# moving a Spearman score by 6 / (N (N^2 - 1)) ~ 4e-7 per swap (N = 256 pixels). Measured:
# max|diff| 2.2e-16 (no swap on these maps); TOL = 1e-6 would absorb two swaps.
SMPRT_TOL = TOL


def test_smooth_mprt_matches_quantus_with_the_same_noise(env, replay):
    n_layers = 3
    # Quantus's numpy draws, in its order: the original smoothed map (custom_preprocess),
    # the "original" column (recomputed, not used by jaxlrp), then one block per layer.
    np.random.seed(1234)
    blocks = [np.random.randn(SMPRT_SAMPLES - 1, B, C, H, W) for _ in range(n_layers + 2)]
    noise = np.stack([blocks[0]] + blocks[2:]).transpose(0, 1, 2, 4, 5, 3)
    np.random.seed(1234)
    q = quantus.SmoothMPRT(nr_samples=SMPRT_SAMPLES, return_last_correlation=False,
                           disable_warnings=True)
    res = q(model=env["tnet"], x_batch=env["xc"].astype(np.float32), y_batch=env["y"],
            a_batch=None, channel_first=True, explain_func=quantus.explain,
            explain_func_kwargs={"method": "InputXGradient"})
    ref = np.stack([np.asarray(res[k], np.float64) for k in ("c1", "c2", "d")], axis=1)
    got = np.asarray(M.smooth_mprt(env["net"], env["x"], env["y"], jax_explain,
                                   jax.random.key(0), nr_samples=SMPRT_SAMPLES, noise=noise,
                                   draw=replay))
    print(f"[quantus] sMPRT: max|diff| = {np.abs(got - ref).max():.1e}")
    assert got.shape == (B, 3) and np.ptp(ref) > 0.1
    np.testing.assert_allclose(got, ref, rtol=0, atol=SMPRT_TOL)
    # the noise matters: the unsmoothed scores differ from the smoothed ones
    plain = np.asarray(M.smooth_mprt(env["net"], env["x"], env["y"], jax_explain,
                                     jax.random.key(0), nr_samples=1, draw=replay))
    assert np.abs(plain - ref).max() > 10 * SMPRT_TOL
