"""A small VGG-style CNN in Flax NNX (:class:`VGG`) and Flax Linen (:class:`VGGLinen`).

Both share one parameter layout, so a model converts losslessly between them
(:func:`nnx_to_linen`, :func:`linen_to_nnx`) and submodule paths agree::

    features/0/conv, features/0/bn   conv 3x3 SAME -> [BatchNorm] -> ReLU   (output: post-ReLU)
    features/1/...                   ... a 2x2 max-pool ends each stage
    classifier/0/dense               flatten (H, W, C order) -> Dense -> ReLU
    head                             Dense logits (B, K)

Each ``features/i`` block is a submodule whose output is its ReLU activation,
so it is a natural Grad-CAM layer. This module also holds the layout helpers
shared with :mod:`jaxlrp.models.resnet`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from jaxlrp.errors import ExplanationError

BN_MOMENTUM = 0.9  # running-average decay (= torch momentum 0.1)
BN_EPSILON = 1e-5  # same as torch.nn.BatchNorm2d



def scaled_normal(scale: float) -> Callable:
    """Initializer: normal with variance ``scale / fan_in`` (He normal for ``scale=2``).

    Draws with numpy from the (concrete) key, which avoids compiling one XLA random
    kernel per parameter shape (seconds each on a small CPU); under tracing it falls
    back to ``jax.random.normal``. Kernels are (..., fan_in, fan_out).
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        std = float(np.sqrt(scale / max(fan_in, 1)))
        if isinstance(key, jax.core.Tracer):
            return jax.random.normal(key, shape, dtype) * std
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        rng = np.random.default_rng(np.asarray(data, dtype=np.uint32).ravel().tolist())
        return jnp.asarray(rng.standard_normal(tuple(shape)) * std, dtype)

    return init


_conv_init = scaled_normal(2.0)
_dense_init = scaled_normal(2.0)
_head_init = scaled_normal(1.0)


# ----------------------------------------------------------------------------- shared helpers


def check_model_input(x: Any, channels: int, size: tuple[int, int] | None, model: str) -> None:
    """Static check of a model input: rank 4 (B, H, W, C), C == channels, (H, W) == size."""
    shape = getattr(x, "shape", None)
    expect = f"(B, {size[0]}, {size[1]}, {channels})" if size else f"(B, H, W, {channels})"
    if shape is None or len(shape) != 4:
        got = tuple(shape) if shape is not None else type(x).__name__
        raise ExplanationError(f"x: {model} expects images of shape {expect} (NHWC), got {got}")
    if shape[-1] != channels or (size is not None and tuple(shape[1:3]) != tuple(size)):
        raise ExplanationError(
            f"x: {model} expects images of shape {expect} (NHWC), got {tuple(shape)}"
        )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def max_pool(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 (VALID), NHWC."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Indexed(nn.Module):
    """A Linen namespace whose children are named ``"0"``, ``"1"``, ...

    It has no ``__call__``: the parent calls the children itself, so that Linen
    paths (``features/0``) match NNX paths of an ``nnx.List``.
    """

    make: Callable[[int], nn.Module]
    n: int

    def setup(self) -> None:
        for i in range(self.n):
            setattr(self, str(i), self.make(i))

    def __getitem__(self, i: int) -> nn.Module:
        return getattr(self, str(i))


def nnx_to_linen_variables(model: nnx.Module) -> dict:
    """Linen variables ``{"params": ..., ["batch_stats": ...]}`` holding ``model``'s arrays.

    NNX ``Param`` go to ``"params"``, ``BatchStat`` to ``"batch_stats"``; list
    indices become string keys, as in the Linen twin.
    """
    out: dict = {}
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        pure = nnx.state(model, kind).to_pure_dict()
        pure = _str_keys(pure)
        if pure:
            out[collection] = pure
    return out


def load_linen_variables(model: nnx.Module, variables: Any) -> nnx.Module:
    """Copy Linen-layout ``variables`` into the NNX ``model`` in place and return it.

    Raises :class:`ExplanationError` naming the key when the trees differ in keys or shapes.
    """
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, kind)
        target = _str_keys(state.to_pure_dict())
        given = variables.get(collection, {}) if hasattr(variables, "get") else None
        if given is None:
            raise ExplanationError(
                f"variables: expected a dict of collections, got {type(variables).__name__}"
            )
        check_same_layout(target, given, collection)
        values = _restore_keys(state.to_pure_dict(), given)
        state.replace_by_pure_dict(values)
        nnx.update(model, state)
    return model


def check_same_layout(expected: Any, given: Any, where: str) -> None:
    """Raise :class:`ExplanationError` unless ``given`` has the keys and shapes of ``expected``."""
    if isinstance(expected, dict):
        if not isinstance(given, dict):
            raise ExplanationError(
                f"variables: {where} should be a dict of {sorted(expected)}, "
                f"got {type(given).__name__}"
            )
        missing = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        if missing:
            raise ExplanationError(f"variables: missing key {where}/{missing[0]}")
        if extra:
            raise ExplanationError(f"variables: unexpected key {where}/{extra[0]}")
        for k in expected:
            check_same_layout(expected[k], given[k], f"{where}/{k}")
        return
    shape = getattr(given, "shape", None)
    if shape is None:
        raise ExplanationError(
            f"variables: {where} should be an array of shape {tuple(expected.shape)}, "
            f"got {type(given).__name__}"
        )
    if tuple(shape) != tuple(expected.shape):
        raise ExplanationError(
            f"variables: {where} has shape {tuple(shape)}, the model expects "
            f"{tuple(expected.shape)}"
        )


def _str_keys(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _restore_keys(template: Any, given: Any) -> Any:
    """``given`` (string keys) re-keyed like ``template`` (NNX keys may be ints)."""
    if isinstance(template, dict):
        return {k: _restore_keys(v, given[str(k)]) for k, v in template.items()}
    return jnp.asarray(given, dtype=template.dtype)


# ----------------------------------------------------------------------------- NNX


class ConvBlock(nnx.Module):
    """Conv 3x3 SAME (+ BatchNorm) + ReLU. (B, H, W, Cin) -> (B, H, W, Cout)."""

    def __init__(self, cin: int, cout: int, batch_norm: bool, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", kernel_init=_conv_init,
                             rngs=rngs)
        self.bn = (
            nnx.BatchNorm(cout, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
            if batch_norm else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return nnx.relu(x)


class DenseBlock(nnx.Module):
    """Dense + ReLU. (B, Din) -> (B, Dout)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, dout, kernel_init=_dense_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.dense(x))


class VGG(nnx.Module):
    """VGG-style classifier. (B, H, W, in_channels) float -> (B, num_classes) logits.

    Args:
      num_classes: number of logits K.
      widths: output channels of each stage; each stage ends with a 2x2 max-pool.
      convs_per_block: conv blocks per stage.
      batch_norm: BatchNorm after each conv (running statistics in eval mode).
      dense: widths of the hidden Dense+ReLU layers.
      in_channels: input channels C.
      input_size: input (H, W) (an int for square images); fixes the flatten size.
      pool: ``"flatten"`` (the classic VGG head: flatten the last feature map) or
        ``"avg"`` (global average pooling, translation invariant; trains much faster
        on the embedded dataset, whose objects appear anywhere).
    """

    def __init__(
        self,
        num_classes: int = 8,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_block: int = 1,
        batch_norm: bool = False,
        dense: Sequence[int] = (64,),
        in_channels: int = 3,
        input_size: int | Sequence[int] = 64,
        pool: str = "flatten",
        *,
        rngs: nnx.Rngs,
    ):
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_block = int(convs_per_block)
        self.batch_norm = bool(batch_norm)
        self.dense_widths = tuple(int(d) for d in dense)
        self.in_channels = int(in_channels)
        self.input_size = _pair(input_size)
        self.pool = str(pool)
        _check_vgg_config(self.config())

        blocks, pool_after, cin = [], [], self.in_channels
        for width in self.widths:
            for _ in range(self.convs_per_block):
                blocks.append(ConvBlock(cin, width, self.batch_norm, rngs=rngs))
                cin = width
            pool_after.append(len(blocks) - 1)
        self.features = nnx.List(blocks)
        self.pool_after = tuple(pool_after)
        s = 2 ** len(self.widths)
        h, w = self.input_size[0] // s, self.input_size[1] // s
        din = cin if self.pool == "avg" else h * w * cin
        hidden = []
        for d in self.dense_widths:
            hidden.append(DenseBlock(din, d, rngs=rngs))
            din = d
        self.classifier = nnx.List(hidden)
        self.head = nnx.Linear(din, self.num_classes, kernel_init=_head_init, rngs=rngs)

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible) that rebuild this architecture."""
        return {
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "convs_per_block": self.convs_per_block,
            "batch_norm": self.batch_norm,
            "dense": list(self.dense_widths),
            "in_channels": self.in_channels,
            "input_size": list(self.input_size),
            "pool": self.pool,
        }

    def __call__(self, x: jax.Array) -> jax.Array:
        check_model_input(x, self.in_channels, self.input_size, "VGG")
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.pool_after:
                x = max_pool(x)
        x = jnp.mean(x, axis=(1, 2)) if self.pool == "avg" else x.reshape(x.shape[0], -1)
        for block in self.classifier:
            x = block(x)
        return self.head(x)


def _check_vgg_config(cfg: dict) -> None:
    if cfg.get("pool", "flatten") not in ("flatten", "avg"):
        raise ExplanationError(f"pool: expected 'flatten' or 'avg', got {cfg.get('pool')!r}")
    for key in ("num_classes", "convs_per_block", "in_channels"):
        if cfg[key] <= 0:
            raise ExplanationError(f"{key}: expected a positive int, got {cfg[key]}")
    if not cfg["widths"] or min(cfg["widths"]) <= 0:
        raise ExplanationError(f"widths: expected positive channel counts, got {cfg['widths']}")
    if cfg["dense"] and min(cfg["dense"]) <= 0:
        raise ExplanationError(f"dense: expected positive widths, got {cfg['dense']}")
    s = 2 ** len(cfg["widths"])
    if min(cfg["input_size"]) < s:
        raise ExplanationError(
            f"input_size: {len(cfg['widths'])} max-pools need an input of at least {s}x{s}, "
            f"got {tuple(cfg['input_size'])}"
        )


# ----------------------------------------------------------------------------- Linen


class ConvBlockLinen(nn.Module):
    """Linen twin of :class:`ConvBlock` (submodules ``conv``, ``bn``)."""

    features: int
    batch_norm: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=_conv_init, name="conv")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPSILON, name="bn")(x)
        return nn.relu(x)


class DenseBlockLinen(nn.Module):
    """Linen twin of :class:`DenseBlock` (submodule ``dense``)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.features, kernel_init=_dense_init, name="dense")(x))


class VGGLinen(nn.Module):
    """Linen twin of :class:`VGG` with the same fields and parameter layout.

    ``apply(variables, x, train=False)``; with ``batch_norm`` and ``train=True``
    pass ``mutable=["batch_stats"]``.
    """

    num_classes: int = 8
    widths: Sequence[int] = (16, 32, 64)
    convs_per_block: int = 1
    batch_norm: bool = False
    dense: Sequence[int] = (64,)
    in_channels: int = 3
    input_size: int | Sequence[int] = 64
    pool: str = "flatten"

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-compatible), as :meth:`VGG.config`."""
        return {
            "num_classes": int(self.num_classes),
            "widths": [int(w) for w in self.widths],
            "convs_per_block": int(self.convs_per_block),
            "batch_norm": bool(self.batch_norm),
            "dense": [int(d) for d in self.dense],
            "in_channels": int(self.in_channels),
            "input_size": list(_pair(self.input_size)),
            "pool": str(self.pool),
        }

    def setup(self) -> None:
        _check_vgg_config(self.config())
        chans = [w for w in self.widths for _ in range(self.convs_per_block)]
        bn = self.batch_norm
        self.features = Indexed(lambda i: ConvBlockLinen(chans[i], bn), len(chans))
        dense = list(self.dense)
        self.classifier = Indexed(lambda i: DenseBlockLinen(dense[i]), len(dense))
        self.head = nn.Dense(self.num_classes, kernel_init=_head_init)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_model_input(x, self.in_channels, _pair(self.input_size), "VGGLinen")
        k = self.convs_per_block
        for i in range(len(self.widths) * k):
            x = self.features[i](x, train)
            if (i + 1) % k == 0:
                x = max_pool(x)
        x = jnp.mean(x, axis=(1, 2)) if self.pool == "avg" else x.reshape(x.shape[0], -1)
        for i in range(len(self.dense)):
            x = self.classifier[i](x)
        return self.head(x)


# ----------------------------------------------------------------------------- conversion


def nnx_to_linen(model: VGG) -> tuple[VGGLinen, dict]:
    """``(VGGLinen, variables)`` with the same architecture and arrays as ``model``."""
    if not isinstance(model, VGG):
        raise ExplanationError(f"model: expected a jaxlrp VGG, got {type(model).__name__}")
    cfg = model.config()
    module = VGGLinen(**{**cfg, "widths": tuple(cfg["widths"]), "dense": tuple(cfg["dense"]),
                         "input_size": tuple(cfg["input_size"])})
    return module, nnx_to_linen_variables(model)


def linen_to_nnx(module: VGGLinen, variables: Any) -> VGG:
    """A :class:`VGG` holding ``variables`` of the Linen ``module``, in eval mode."""
    if not isinstance(module, VGGLinen):
        raise ExplanationError(f"module: expected a VGGLinen, got {type(module).__name__}")
    model = VGG(**module.config(), rngs=nnx.Rngs(0))
    load_linen_variables(model, variables)
    model.eval()
    return model
