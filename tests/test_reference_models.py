"""The reference ViT and ConvNeXt architectures: loaders, NNX == Linen, size, layout."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import jaxlrp
from jaxlrp import checkpoint
from jaxlrp._tracing import LinenModel
from jaxlrp.data import embedded
from jaxlrp.errors import ExplanationError
from jaxlrp.models import convnext, vit
from jaxlrp.models.vgg import load_linen_variables, nnx_to_linen_variables

MODELS = {
    "vit": (vit, vit.vit_model, vit.vit_linen, vit.ViT, vit.ViTLinen),
    "convnext": (convnext, convnext.convnext_model, convnext.convnext_linen,
                 convnext.ConvNeXt, convnext.ConvNeXtLinen),
}


BUILD = {"vit": vit.build_vit, "convnext": convnext.build_convnext}


@pytest.fixture(scope="module")
def sample():
    return embedded("test", n=8, seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of each architecture with fresh weights (independent of the shipped
    files, which test_shipped_weights_reach_90_percent checks)."""
    folder = tmp_path_factory.mktemp("reference")
    return {name: checkpoint.save(folder / f"{name}.msgpack", build(seed=3))
            for name, build in BUILD.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_is_small(name, saved):
    assert saved[name].stat().st_size < 5 * 2**20  # the bound for a shipped model


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_loaders(name, sample, saved):
    module, load, load_linen, nnx_cls, linen_cls = MODELS[name]
    model = load(saved[name])
    assert type(model) is nnx_cls
    assert model.config() == {**module.CONFIG, **{
        k: list(v) for k, v in module.CONFIG.items() if isinstance(v, tuple)
    }, "input_size": [64, 64]}
    # each call returns an independent module
    other = load(saved[name])
    other.head.bias[...] = other.head.bias[...] + 1.0
    assert not np.allclose(np.asarray(load(saved[name]).head.bias[...]),
                           np.asarray(other.head.bias[...]))
    pair = load_linen(saved[name])
    assert isinstance(pair, LinenModel) and isinstance(pair.module, linen_cls)
    logits = model(sample.images[:4])
    assert logits.shape == (4, 8)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nnx_and_linen_give_identical_logits(name, sample, saved):
    _, load, load_linen, _, _ = MODELS[name]
    a = np.asarray(jax.jit(lambda x: load(saved[name])(x))(sample.images))
    b = np.asarray(jax.jit(lambda x: load_linen(saved[name])(x))(sample.images))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.array_equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_linen_init_has_the_same_layout(name, saved):
    """A fresh Linen init has exactly the keys and shapes of the NNX model's variables."""
    _, load, load_linen, _, _ = MODELS[name]
    module = load_linen(saved[name]).module
    init = module.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), dict(init))
    ours = jax.tree_util.tree_map(lambda a: tuple(a.shape),
                                  nnx_to_linen_variables(load(saved[name])))
    assert shapes == ours


def test_vit_blocks_output_tokens():
    """The last block's call outputs the token sequence (B, 1 + h*w, D)."""
    model = vit.build_vit(0)
    cfg = model.config()
    grid = 64 // cfg["patch_size"]
    infos = {i.path: i for i in jaxlrp.layers(model, (2, 64, 64, 3))}
    last = f"blocks/{cfg['depth'] - 1}"
    assert infos[last].shape == (2, 1 + grid * grid, cfg["dim"])
    linen_infos = {i.path: i for i in jaxlrp.layers(
        vit.to_linen(model, vit.linen_module(model)), (2, 64, 64, 3))}
    assert linen_infos[last].shape == infos[last].shape


def test_convnext_blocks_are_spatial():
    model = convnext.build_convnext(0)
    infos = {i.path: i.shape for i in jaxlrp.layers(model, (2, 64, 64, 3))}
    s = model.config()["stem_size"]
    for i, w in enumerate(model.config()["widths"]):
        side = 64 // s // 2**i
        assert infos[f"stages/{i}/0"] == (2, side, side, w)


def _perturb(tree, rng):
    return jax.tree_util.tree_map(
        lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), tree)


@pytest.mark.slow
def test_nnx_linen_agree_on_random_weights():
    """Same arrays in both frameworks give the same logits (not only the shipped ones)."""
    x = np.asarray(jax.random.uniform(jax.random.key(3), (2, 64, 64, 3)))
    for build, linen_module in ((vit.build_vit, vit.linen_module),
                                (convnext.build_convnext, convnext.linen_module)):
        model = build(5)
        variables = nnx_to_linen_variables(model)
        noisy = _perturb(variables, np.random.default_rng(0))
        load_linen_variables(model, noisy)
        np.testing.assert_allclose(np.asarray(model(x)),
                                   np.asarray(linen_module(model).apply(noisy, x)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(dim=30, num_heads=4), "num_heads"),
    (dict(patch_size=12), "input_size"),
    (dict(depth=0), "depth"),
    (dict(stem_channels=(16, 0)), "stem_channels"),
    (dict(patch_size=4, stem_channels=(8, 8, 8)), "patch_size: expected a multiple of 2"),
])
def test_vit_config_errors(bad, match):
    with pytest.raises(ExplanationError, match=match):
        vit.build_vit(0, **bad)


@pytest.mark.parametrize("bad, match", [
    (dict(depths=(1, 1, 1)), "depths"),
    (dict(stem_size=12), "input_size"),
    (dict(layer_scale=0.0), "layer_scale"),
    (dict(stem_channels=(-1,)), "stem_channels"),
    (dict(stem_size=2, stem_channels=(8, 8)), "stem_size: expected a multiple of 2"),
])
def test_convnext_config_errors(bad, match):
    with pytest.raises(ExplanationError, match=match):
        convnext.build_convnext(0, **bad)


def test_wrong_input_shape_is_an_explanation_error():
    with pytest.raises(ExplanationError, match="x: ViT expects"):
        vit.build_vit(0)(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ExplanationError, match="x: ConvNeXt expects"):
        convnext.build_convnext(0)(np.zeros((1, 64, 64, 1), np.float32))


def test_missing_checkpoint_is_an_explanation_error(tmp_path):
    with pytest.raises(ExplanationError, match="no ViT checkpoint"):
        vit.vit_model(tmp_path / "none.msgpack")
    path = tmp_path / "vit.msgpack"
    checkpoint.save(path, convnext.build_convnext(0))
    with pytest.raises(ExplanationError, match="does not fit"):
        vit.vit_model(path)


SHIPPED = ("convnext", "vit")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reach_90_percent(name):
    """The shipped checkpoint: >= 90% on the whole embedded test split, in NNX and Linen,
    and exactly the accuracy that benchmarks/results/reference_models.json records."""
    import json
    from pathlib import Path

    from jaxlrp.training import evaluate_accuracy

    module, load, load_linen, _, _ = MODELS[name]
    assert module.PATH.is_file(), f"{module.PATH} does not ship"
    assert module.PATH.stat().st_size < 5 * 2**20
    test = embedded("test", seed=0)
    acc_nnx = evaluate_accuracy(load(), test)
    acc_linen = evaluate_accuracy(load_linen(), test)
    assert acc_nnx >= 0.90 and acc_linen >= 0.90
    results = Path(__file__).resolve().parents[1] / "benchmarks/results/reference_models.json"
    recorded = json.loads(results.read_text())[name]
    assert recorded["test_examples"] == len(test) == 2400
    assert acc_nnx == pytest.approx(recorded["test_accuracy_nnx"], abs=1e-9)
    assert acc_linen == pytest.approx(recorded["test_accuracy_linen"], abs=1e-9)


def test_copy_conv_stem():
    """The ViT recipe's stem initialisation copies the ConvNeXt stem, leaving it intact."""
    from jaxlrp.models.reference import copy_conv_stem

    src, dst = convnext.build_convnext(1), vit.build_vit(2)
    before = np.asarray(src.stem_convs[0].kernel[...]).copy()
    assert copy_conv_stem(dst, src) is dst
    for d, s in zip(dst.stem_convs, src.stem_convs, strict=True):
        np.testing.assert_array_equal(np.asarray(d.kernel[...]), np.asarray(s.kernel[...]))
        np.testing.assert_array_equal(np.asarray(d.bias[...]), np.asarray(s.bias[...]))
    dst.stem_convs[0].kernel[...] = dst.stem_convs[0].kernel[...] + 1.0
    np.testing.assert_array_equal(np.asarray(src.stem_convs[0].kernel[...]), before)
    with pytest.raises(ExplanationError, match="stem_channels"):
        copy_conv_stem(vit.build_vit(0, stem_channels=(8, 16)), src)
    with pytest.raises(ExplanationError, match="stem_channels"):
        copy_conv_stem(vit.build_vit(0, stem_channels=()), convnext.build_convnext(0))


def test_nnx_module_type():
    assert isinstance(vit.build_vit(0), nnx.Module)
