"""The LRP engine on whole models: conservation, canonizers, transformations, errors."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlrp
from jaxlrp._lrp import composites, engine, lrp
from jaxlrp._lrp import rules as R
from jaxlrp.errors import ExplanationError, UnsupportedOperationError
from jaxlrp.models import VGG, ResNet


@pytest.fixture(autouse=True, scope="module")
def x64():
    """float64 for this module only (other test modules expect JAX's float32 default)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def to64(model):
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                         else a, state)
    return nnx.merge(graphdef, state)


def randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    key = jax.random.key(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            key, *ks = jax.random.split(key, 5)
            n = node.mean.value.shape
            node.mean.value = 0.3 * jax.random.normal(ks[0], n)
            node.var.value = jax.random.uniform(ks[1], n, minval=0.5, maxval=2.0)
            node.scale.value = jax.random.uniform(ks[2], n, minval=-1.5, maxval=1.5)
            node.bias.value = 0.3 * jax.random.normal(ks[3], n)
    return model


# ----------------------------------------------------------------------------- random CNNs


class RandomCNN(nnx.Module):
    """Bias-free ReLU CNN built from a list of ops: conv / residual / avgpool / maxpool."""

    def __init__(self, ops, channels, rngs):
        self.ops = tuple(op for op, _ in ops)
        layers = []
        c = 3
        for op, width in ops:
            if op == "conv":
                layers.append(nnx.Conv(c, width, (3, 3), use_bias=False, rngs=rngs))
                c = width
            elif op == "residual":
                layers.append(nnx.List([
                    nnx.Conv(c, c, (3, 3), use_bias=False, rngs=rngs),
                    nnx.Conv(c, c, (3, 3), use_bias=False, rngs=rngs),
                ]))
            else:
                layers.append(None)
        self.layers = nnx.List(layers)
        self.hidden = nnx.Linear(c, channels, use_bias=False, rngs=rngs)
        self.head = nnx.Linear(channels, 4, use_bias=False, rngs=rngs)

    def __call__(self, x):
        for op, layer in zip(self.ops, self.layers, strict=True):
            if op == "conv":
                x = nnx.relu(layer(x))
            elif op == "residual":
                x = nnx.relu(x + layer[1](nnx.relu(layer[0](x))))
            elif op == "avgpool":
                x = nnx.avg_pool(x, (2, 2), (2, 2))
            elif op == "maxpool":
                x = nnx.max_pool(x, (2, 2), (2, 2))
        x = x.mean(axis=(1, 2))
        return self.head(nnx.relu(self.hidden(x)))


op_lists = st.lists(
    st.tuples(st.sampled_from(["conv", "residual", "avgpool", "maxpool"]),
              st.integers(2, 5)),
    min_size=1, max_size=4,
).filter(lambda ops: sum(op.endswith("pool") for op, _ in ops) <= 2)


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(ops=op_lists, seed=st.integers(0, 1000), target=st.integers(0, 3))
def test_conservation_on_random_cnns(ops, seed, target):
    model = to64(RandomCNN(ops, 6, nnx.Rngs(seed)))
    x = jax.random.uniform(jax.random.key(seed), (2, 8, 8, 3), jnp.float64)
    rel, layers = lrp(model, x, target, composites.epsilon(0.0), return_layers=True)
    model.eval()
    logit = np.asarray(model(x))[:, target]
    total = np.asarray(rel.sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(total, logit, rtol=1e-6, atol=1e-12)
    residual = {f"layers/{i}/" for i, (op, _) in enumerate(ops) if op == "residual"}
    checked = 0
    for layer in layers:
        if any(layer.path.startswith(p) for p in residual):
            continue  # inside a residual branch: only the sum over both branches is conserved
        parts = layer.relevance if isinstance(layer.relevance, tuple) else (layer.relevance,)
        s = sum(np.asarray(p.reshape(2, -1).sum(axis=1)) for p in parts)
        np.testing.assert_allclose(s, logit, rtol=1e-6, atol=1e-12,
                                   err_msg=f"layer {layer.kind} {layer.path}")
        checked += 1
    assert checked >= 3


@pytest.mark.slow
def test_one_hot_init_is_logit_init_divided_by_logit():
    model = to64(VGG(num_classes=5, widths=(4, 6), dense=(8,), input_size=16, rngs=nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3), jnp.float64)
    a = lrp(model, x, 2, "epsilon_plus")
    b = lrp(model, x, 2, "epsilon_plus", init="one_hot")
    model.eval()
    logit = model(x)[:, 2]
    np.testing.assert_allclose(a, b * logit[:, None, None, None], rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- canonizers


@pytest.mark.slow
def test_batchnorm_folding_keeps_every_layer_output():
    model = randomize_bn(to64(VGG(num_classes=5, widths=(4, 6), batch_norm=True, dense=(8,),
                                  input_size=16, rngs=nnx.Rngs(0))))
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), jnp.float64)
    adapter, graph, leaves = engine.prepare(model, x)
    convs = [n for n in graph.nodes if n.kind == "conv"]
    assert convs and all(len(n.post) >= 3 for n in convs), "BatchNorm was not folded"
    env = dict(graph.consts)
    for i, v in zip(graph.in_ids[:-1], leaves, strict=True):
        env[i] = v
    env[graph.x_id] = x
    from jaxlrp._lrp.graph import evaluate

    evaluate(graph.eqns, env)
    for node in convs:
        layer = engine._linear_layer(node, env, graph)
        folded = layer(env[node.ins[0]])
        np.testing.assert_allclose(folded, env[node.outs[0]], rtol=1e-12, atol=1e-12)


def test_without_canonizer_batchnorm_passes_relevance():
    model = randomize_bn(to64(VGG(num_classes=5, widths=(4,), batch_norm=True, dense=(),
                                  input_size=8, rngs=nnx.Rngs(0))))
    x = jax.random.uniform(jax.random.key(2), (1, 8, 8, 3), jnp.float64)
    folded = lrp(model, x, 0, "epsilon_plus")
    unfolded = lrp(model, x, 0, "epsilon_plus", canonizers=())
    assert not np.allclose(folded, unfolded)


# ----------------------------------------------------------------------------- transformations


@pytest.fixture(scope="module")
def resnet():
    return randomize_bn(ResNet(num_classes=6, widths=(4, 8), rngs=nnx.Rngs(3)), seed=3)


@pytest.mark.slow
def test_batched_equals_per_example_and_jit_equals_eager(resnet):
    x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
    t = jnp.array([0, 5, 2, 2])
    comp = composites.epsilon_gamma_box(0.0, 1.0)
    batched = lrp(resnet, x, t, comp)
    per = jnp.concatenate([lrp(resnet, x[i:i + 1], t[i:i + 1], comp) for i in range(4)])
    np.testing.assert_allclose(batched, per, rtol=1e-5, atol=1e-7)
    jitted = jax.jit(lambda m, x, t: lrp(m, x, t, comp))(resnet, x, t)
    np.testing.assert_allclose(jitted, batched, rtol=1e-5, atol=1e-7)
    vmapped = jax.vmap(lambda xi, ti: lrp(resnet, xi[None], ti[None], comp)[0])(x, t)
    np.testing.assert_allclose(vmapped, batched, rtol=1e-5, atol=1e-7)


def test_nnx_and_linen_give_the_same_relevance():
    from jaxlrp.models.vgg import nnx_to_linen

    model = VGG(num_classes=5, widths=(4, 6), dense=(8,), input_size=16, rngs=nnx.Rngs(0))
    module, variables = nnx_to_linen(model)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    a = lrp(model, x, 1, "epsilon_plus_flat")
    b = lrp((module, variables), x, 1, "epsilon_plus_flat")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


class SoftCNN(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(3, 3, (3, 3), rngs=rngs)
        self.d = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.softplus(self.c1(x))
        h = h + jax.nn.softplus(self.c2(h))
        return self.d(h.mean(axis=(1, 2)))


@pytest.mark.slow
def test_gradients_through_lrp_match_finite_differences():
    model = to64(SoftCNN(nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(0), (1, 5, 5, 2), jnp.float64, 0.2, 1.0)
    comp = composites.epsilon(0.1)

    def f(x, m=model):
        r = lrp(m, x, 1, comp)
        return jnp.sum(r**2) + jnp.sum(jnp.sin(3 * r))

    g = jax.grad(f)(x)
    rng = np.random.default_rng(0)
    for _ in range(4):
        d = jnp.asarray(rng.normal(size=x.shape))
        h = 1e-5
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
        np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=1e-6, atol=1e-9)

    # w.r.t. parameters: NNX modules are pytrees
    gm = jax.grad(lambda m: f(x, m))(model)
    k = model.c1.kernel.value
    d = jnp.asarray(rng.normal(size=k.shape))
    h = 1e-5

    def with_kernel(kernel):
        m = jax.tree.map(lambda a: a, model)
        m.c1.kernel.value = kernel
        return f(x, m)

    fd = (with_kernel(k + h * d) - with_kernel(k - h * d)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(gm.c1.kernel.value, d), fd, rtol=1e-6, atol=1e-9)
    # second order runs and is finite
    hvp = jax.jvp(jax.grad(f), (x,), (jnp.ones_like(x),))[1]
    assert np.all(np.isfinite(hvp))


# ----------------------------------------------------------------------------- errors


class Gated(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Conv(3, 2, (3, 3), rngs=rngs)
        self.b = nnx.Conv(3, 2, (3, 3), rngs=rngs)
        self.d = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
        return self.d(jnp.maximum(self.a(x), jax.nn.sigmoid(self.b(x))).mean(axis=(1, 2)))


class Sorted(nnx.Module):
    def __init__(self, rngs):
        self.block = nnx.Linear(12, 2, rngs=rngs)

    def __call__(self, x):
        return self.block(jnp.sort(x.reshape(x.shape[0], -1), axis=-1))


def test_unsupported_operations_name_the_op_and_path():
    x = jnp.ones((1, 4, 4, 3))
    with pytest.raises(UnsupportedOperationError, match="'max' of two different activations"):
        lrp(Gated(nnx.Rngs(0)), x, 0)
    with pytest.raises(UnsupportedOperationError, match="'sort'"):
        lrp(Sorted(nnx.Rngs(0)), jnp.ones((1, 2, 2, 3)), 0)


def test_bad_arguments():
    model = VGG(num_classes=5, widths=(4,), dense=(), input_size=8, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 3))
    with pytest.raises(ExplanationError, match="unknown module path 'nope'"):
        lrp(model, x, 0, composites.layer_map(conv=R.ZPlus(), paths={"nope": R.Flat()}))
    with pytest.raises(ExplanationError, match="NaN or Inf"):
        lrp(model, x.at[1, 0, 0, 0].set(jnp.nan), 0)
    with pytest.raises(ExplanationError, match="out of range"):
        lrp(model, x, 7)
    with pytest.raises(ExplanationError, match="rank 4"):
        lrp(model, x[0], 0)
    with pytest.raises(ExplanationError, match="unknown preset"):
        lrp(model, x, 0, "epsilon_minus")
    with pytest.raises(ExplanationError, match="init"):
        lrp(model, x, 0, init="ones")
    with pytest.raises(ExplanationError, match="model"):
        lrp(nn.Dense(3), x, 0)


def test_zero_input_gives_zero_relevance_and_traced_nan_is_poisoned():
    model = VGG(num_classes=5, widths=(4,), dense=(6,), input_size=8, rngs=nnx.Rngs(0))
    for comp in ("paper", "epsilon_plus_flat", "epsilon_alpha2_beta1"):
        r = lrp(model, jnp.zeros((2, 8, 8, 3)), 1, comp)
        assert np.all(np.isfinite(r)), comp
    r = lrp(model, jnp.zeros((1, 8, 8, 3)), 1, "paper")
    assert np.all(np.asarray(r) == 0)
    x = jnp.ones((2, 8, 8, 3)).at[1, 0, 0, 0].set(jnp.nan)
    out = jax.jit(lambda x: lrp(model, x, 1))(x)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


def test_layer_paths_reach_composites():
    model = VGG(num_classes=5, widths=(4, 6), dense=(8,), input_size=16, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3))
    seen = []

    def comp(ctx):
        seen.append((ctx.kind, ctx.path, ctx.first))
        return composites.paper()(ctx)

    lrp(model, x, 0, comp)
    paths = {p for k, p, _ in seen if k in ("conv", "dense")}
    assert {"features/0/conv", "features/1/conv", "classifier/0/dense", "head"} <= paths
    assert [p for k, p, first in seen if first] == ["features/0/conv"]


def test_public_namespace():
    # every name in __all__ resolves (lazy ones included) and the top-level entry points are
    # the implementations, not re-wrapped copies
    for name in jaxlrp.__all__:
        assert getattr(jaxlrp, name) is not None, name
    assert jaxlrp.lrp is engine.lrp and jaxlrp.lrp is lrp
    # public namespaces re-export the implementations (jaxlrp._lrp.*)
    assert jaxlrp.composites.paper is composites.paper and jaxlrp.rules.ZPlus is R.ZPlus
    import jaxlrp.composites as public_composites  # a module path, not a function's attribute

    assert public_composites.attn_lrp is composites.attn_lrp
    # no public name is both a function and a module of the package
    pkg = Path(jaxlrp.__file__).parent
    for name in jaxlrp.__all__:
        if callable(getattr(jaxlrp, name)) and not isinstance(getattr(jaxlrp, name), type):
            assert not (pkg / f"{name}.py").exists() and not (pkg / name).is_dir(), name
    with pytest.raises(AttributeError, match="no_such_name"):
        jaxlrp.no_such_name  # noqa: B018
    # and jaxlrp.lrp computes: on a linear model z = flatten(x) @ w with epsilon 0 the input
    # relevance is x * w[:, target] (an independent closed form)

    class Linear(nnx.Module):
        def __init__(self):
            self.d = nnx.Linear(12, 3, use_bias=False, rngs=nnx.Rngs(2))

        def __call__(self, v):
            return self.d(v.reshape(v.shape[0], -1))

    model = to64(Linear())
    xs = jax.random.normal(jax.random.key(3), (2, 2, 2, 3), jnp.float64)
    w = np.asarray(model.d.kernel.value)
    rel = np.asarray(jaxlrp.lrp(model, xs, jnp.array([0, 2]), composites.epsilon(0.0)))
    want = (np.asarray(xs).reshape(2, 12) * w[:, [0, 2]].T).reshape(2, 2, 2, 3)
    np.testing.assert_allclose(rel, want, rtol=1e-10, atol=1e-12)
