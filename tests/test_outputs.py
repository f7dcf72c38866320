"""What the explainers call "logits", for every output style (jaxlrp._tracing.Adapter.apply).

* a trailing softmax / log_softmax (however written) is stripped: CAM, LRP and the
  metrics explain exactly what they explain on the same model without it;
  ``jaxlrp.model(..., softmax="keep")`` keeps the probabilities;
* structured outputs (dict, dataclass, NamedTuple, tuple) give their ``logits`` field or
  what ``output=`` selects;
* Linen ``train`` / ``deterministic`` / ``use_running_average`` flags default to
  evaluation mode; bound Linen modules are accepted.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxlrp
from jaxlrp import metrics
from jaxlrp._tracing import NNXOutput, as_adapter

S, K = 8, 3


@dataclasses.dataclass
class Out:
    """A Hugging Face-style output object."""

    logits: jax.Array
    hidden: jax.Array


class Pair(NamedTuple):
    features: jax.Array
    scores: jax.Array


class Net(nnx.Module):
    """conv-relu-conv-relu, mean pool, dense; ``final`` chooses what it returns."""

    def __init__(self, final: str = "logits"):
        self.c1 = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
        self.c2 = nnx.Conv(4, 6, (3, 3), rngs=nnx.Rngs(1))
        self.head = nnx.Linear(6, K, rngs=nnx.Rngs(2))
        self.final = final

    def __call__(self, x):
        h = nnx.relu(self.c2(nnx.relu(self.c1(x)))).mean(axis=(1, 2))
        z = self.head(h)
        f = self.final
        if f == "softmax":
            return jax.nn.softmax(z)
        if f == "log_softmax":
            return jax.nn.log_softmax(z, axis=-1)
        if f == "handwritten":  # exp / sum, cast to float32 first
            e = jnp.exp(z.astype(jnp.float32))
            return e / jnp.sum(e, axis=1, keepdims=True)
        if f == "temperature":  # softmax(z / 2): the logits are z / 2
            return nnx.softmax(z / 2.0)
        if f == "dict":
            return {"hidden": h, "logits": z}
        if f == "dataclass":
            return Out(z, h)
        if f == "namedtuple":
            return Pair(h, z)
        if f == "tuple":
            return h, z
        return z


@functools.cache
def net(final: str = "logits") -> Net:
    return Net(final)


def imgs() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, S, S, 3)), jnp.float32)


T = jnp.array([0, 2])


@functools.cache
def reference():
    """Logits, Grad-CAM and LRP of the plain-logits model."""
    m, x = net(), imgs()
    return (as_adapter(m).forward(x), jaxlrp.gradcam(m, x, T, "c2"), jaxlrp.lrp(m, x, T))


@pytest.mark.slow
@pytest.mark.parametrize("final,scale", [("softmax", 1.0), ("log_softmax", 1.0),
                                         ("handwritten", 1.0), ("temperature", 0.5)])
def test_trailing_softmax_is_stripped_in_cam_and_lrp(final, scale):
    m, x = net(final), imgs()
    logits, cam_ref, lrp_ref = reference()
    np.testing.assert_allclose(as_adapter(m).forward(x), scale * logits, rtol=1e-6, atol=1e-6)
    # CAMs are scale-invariant after min-max normalisation; LRP scales with the logit
    np.testing.assert_allclose(jaxlrp.gradcam(m, x, T, "c2"), cam_ref, atol=1e-6)
    np.testing.assert_allclose(jaxlrp.lrp(m, x, T), scale * lrp_ref, rtol=1e-5, atol=1e-7)


def test_softmax_stripped_for_metrics_and_under_jit():
    m, x = net("softmax"), imgs()
    a = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, S, S)), jnp.float32)
    kw = dict(nr_runs=3, subset_size=8)
    ours = metrics.faithfulness_correlation(m, x, T, a, jax.random.key(0), **kw)
    ref = metrics.faithfulness_correlation(net(), x, T, a, jax.random.key(0), **kw)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    jitted = jax.jit(lambda mm, xx: jaxlrp.lrp(mm, xx, T))(m, x)
    np.testing.assert_allclose(jitted, reference()[2], rtol=1e-5, atol=1e-7)


def test_keep_softmax_explains_the_probability():
    x = imgs()
    keep = jaxlrp.model(net("softmax"), softmax="keep")
    assert isinstance(keep, NNXOutput)
    probs = as_adapter(keep).forward(x)
    np.testing.assert_allclose(probs, jax.nn.softmax(reference()[0]), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # Grad-CAM of the probability: d p_t / dA = p_t (d z_t - sum_k p_k d z_k) / dA differs
    ours = jaxlrp.gradcam(keep, x, T, "c2", relu=False, normalize=False, upsample=False)
    ref = jaxlrp.gradcam(net(), x, T, "c2", relu=False, normalize=False, upsample=False)
    assert float(jnp.abs(ours - ref).max()) > 1e-4 * float(jnp.abs(ref).max())
    # and the same model with softmax="strip" (the default) explains the logits again
    strip = jaxlrp.model(keep, softmax="strip")
    np.testing.assert_allclose(as_adapter(strip).forward(x), reference()[0], rtol=1e-6)


@pytest.mark.parametrize("final,output", [
    ("dict", None), ("dataclass", None), ("namedtuple", "scores"), ("namedtuple", 1),
    ("tuple", 1), ("tuple", -1), ("dict", lambda o: o["logits"]),
])
def test_structured_outputs_select_the_logits(final, output):
    m = net(final) if output is None else jaxlrp.model(net(final), output=output)
    x = imgs()
    np.testing.assert_allclose(as_adapter(m).forward(x), reference()[0], rtol=1e-6)
    assert as_adapter(m).layers(x)[-1].path == "head"  # paths of the wrapped model


class Ident(nnx.Module):
    def __call__(self, x):
        return x


class PostNet(Net):
    """Net ending in softmax, then one more submodule call on the probabilities."""

    def __init__(self):
        super().__init__("softmax")
        self.post = Ident()

    def __call__(self, x):
        return self.post(super().__call__(x))


def test_one_trace_gives_plan_logits_and_layers():
    """The output plan, the logits' shape and the layer list come from one trace: with
    the softmax stripped the calls end at the captured layer, with softmax='keep' they
    go on to the last submodule."""
    from jaxlrp._tracing.adapter import apply_checked

    jaxlrp.clear_caches()
    m, x = PostNet(), imgs()
    strip, keep = as_adapter(m), as_adapter(jaxlrp.model(m, softmax="keep"))
    assert apply_checked(strip, x).shape == apply_checked(keep, x).shape == (2, K)
    assert [i.path for i in strip.layers(x)] == ["c1", "c2", "head"]
    assert [i.path for i in keep.layers(x)] == ["c1", "c2", "head", "post"]
    np.testing.assert_allclose(strip.forward(x), reference()[0], rtol=1e-6)
    np.testing.assert_allclose(keep.forward(x), jax.nn.softmax(reference()[0]), rtol=1e-6)
    jaxlrp.clear_caches()  # the same answers when layers() comes first
    assert [i.path for i in as_adapter(m).layers(x)] == ["c1", "c2", "head"]


def test_structured_output_explained_like_logits():
    m, x = jaxlrp.model(net("tuple"), output=1), imgs()
    _, cam_ref, lrp_ref = reference()
    np.testing.assert_allclose(jaxlrp.gradcam(m, x, T, "c2"), cam_ref, atol=1e-6)
    np.testing.assert_allclose(jaxlrp.lrp(m, x, T), lrp_ref, rtol=1e-5, atol=1e-7)
    # the wrapper is a pytree: jit takes it like the model
    np.testing.assert_allclose(jax.jit(lambda mm, xx: jaxlrp.gradcam(mm, xx, T, "c2"))(m, x),
                               cam_ref, atol=1e-6)


# ----------------------------------------------------------------------------- Linen


class LNet(nn.Module):
    """flaxmodels-style: ``output`` attribute, a ``train`` flag, BatchNorm and Dropout."""

    output: str = "softmax"

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        x = nn.Dense(K, name="head")(x.mean(axis=(1, 2)))
        return nn.softmax(x) if self.output == "softmax" else x


class LDet(nn.Module):
    """A ``deterministic`` flag (no default) and ``use_running_average`` as keyword."""

    @nn.compact
    def __call__(self, x, *, deterministic: bool, use_running_average: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=use_running_average, name="bn")(x)
        x = nn.Dropout(0.5, deterministic=deterministic)(nn.relu(x))
        return nn.Dense(K, name="head")(x.mean(axis=(1, 2)))


@functools.cache
def lnet():
    x = imgs()
    v = LNet(output="logits").init(jax.random.key(0), x, train=False)
    # non-trivial BatchNorm statistics
    v = {"params": v["params"], "batch_stats": jax.tree_util.tree_map(
        lambda a: a + 0.3, v["batch_stats"])}
    return v


def test_linen_train_flag_runs_in_eval_mode_and_softmax_is_stripped():
    v, x = lnet(), imgs()
    ref = jaxlrp.linen(LNet(output="logits"), v, train=False)
    want = LNet(output="logits").apply(v, x, train=False)
    for m in [(LNet(), v), (LNet(output="logits"), v), jaxlrp.linen(LNet(), v)]:
        np.testing.assert_allclose(as_adapter(m).forward(x), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jaxlrp.gradcam((LNet(), v), x, T),
                               jaxlrp.gradcam(ref, x, T), atol=1e-6)
    np.testing.assert_allclose(jaxlrp.lrp((LNet(), v), x, T), jaxlrp.lrp(ref, x, T),
                               rtol=1e-5, atol=1e-7)


def test_linen_deterministic_and_running_average_flags():
    x = imgs()
    v = LDet().init(jax.random.key(1), x, deterministic=True, use_running_average=True)
    want = LDet().apply(v, x, deterministic=True, use_running_average=True)
    ad = as_adapter((LDet(), v))
    assert ad.apply_kwargs == {"deterministic": True, "use_running_average": True}
    np.testing.assert_allclose(ad.forward(x), want, rtol=1e-6)
    assert jaxlrp.gradcam((LDet(), v), x, T).shape == (2, S, S)


def test_bound_linen_module_is_accepted():
    v, x = lnet(), imgs()
    bound = LNet().bind(v)
    np.testing.assert_allclose(jaxlrp.gradcam(bound, x, T), jaxlrp.gradcam((LNet(), v), x, T),
                               atol=1e-6)
    np.testing.assert_allclose(jaxlrp.lrp(bound, x, T), jaxlrp.lrp((LNet(), v), x, T),
                               rtol=1e-5, atol=1e-7)
    keep = jaxlrp.model(bound, softmax="keep")
    np.testing.assert_allclose(as_adapter(keep).forward(x).sum(axis=1), 1.0, rtol=1e-6)
