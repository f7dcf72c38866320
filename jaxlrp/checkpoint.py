"""Save and load model weights: msgpack arrays + a JSON header, never pickle.

A checkpoint is one msgpack map::

    {"format": "jaxlrp-checkpoint", "version": 1,
     "header": "<JSON: architecture, config, jaxlrp_version, metadata>",
     "sha256": "<hex digest of state>",
     "state": <flax msgpack bytes of {"params": ..., "batch_stats": ...}>}

The state uses the Linen variables layout (string keys), which NNX and Linen
jaxlrp models share, so a checkpoint loads into either. ``load(path)`` rebuilds
VGG/ResNet from the header; for other NNX models pass a template ``model=``.
Writes are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import msgpack
import numpy as np
from flax import nnx, serialization

from jaxlrp._atomic import atomic_write
from jaxlrp._tracing import LinenModel
from jaxlrp.errors import ExplanationError
from jaxlrp.models import resnet as _resnet
from jaxlrp.models import vgg as _vgg

FORMAT = "jaxlrp-checkpoint"
VERSION = 1

# architecture name -> (NNX class, Linen class)
ARCHITECTURES: dict[str, tuple[type, type]] = {
    "VGG": (_vgg.VGG, _vgg.VGGLinen),
    "ResNet": (_resnet.ResNet, _resnet.ResNetLinen),
}


def save(path: str | os.PathLike, model: Any, metadata: dict | None = None) -> Path:
    """Write ``model``'s weights to ``path`` atomically and return the path.

    Args:
      path: destination file (``.msgpack`` by convention); parent folders are created.
      model: an NNX module (jaxlrp VGG/ResNet, or any NNX module), a
        ``(linen_module, variables)`` pair or ``jaxlrp.linen(...)``.
      metadata: JSON-serialisable extra information stored in the header.
    """
    arch, config, variables = _describe(model)
    header = {
        "architecture": arch,
        "config": config,
        "jaxlrp_version": _jaxlrp_version(),
        "metadata": metadata or {},
    }
    try:
        header_json = json.dumps(header, sort_keys=True)
    except TypeError as e:
        raise ExplanationError(f"metadata: must be JSON-serialisable: {e}") from e
    arrays = jax.tree_util.tree_map(np.asarray, variables)
    state = serialization.msgpack_serialize(arrays)
    blob = msgpack.packb(
        {
            "format": FORMAT,
            "version": VERSION,
            "header": header_json,
            "sha256": hashlib.sha256(state).hexdigest(),
            "state": state,
        },
        use_bin_type=True,
    )
    return atomic_write(path, blob)


def read_header(path: str | os.PathLike) -> dict:
    """The checkpoint's header: ``architecture``, ``config``, ``jaxlrp_version``, ``metadata``."""
    return _read(path)[0]


def load(path: str | os.PathLike, model: nnx.Module | None = None) -> nnx.Module:
    """Load an NNX model from ``path`` (in eval mode).

    Without ``model`` the architecture is rebuilt from the header (VGG, ResNet).
    With ``model`` the weights are loaded into that template in place; its
    architecture and every array shape must match the checkpoint.
    """
    header, variables = _read(path)
    arch = header.get("architecture")
    if model is None:
        if arch not in ARCHITECTURES:
            raise ExplanationError(
                f"path: {path} holds a {arch or 'custom'} model that jaxlrp cannot rebuild; "
                "pass a model of that architecture as model="
            )
        model = _build(ARCHITECTURES[arch][0], header, path)
    else:
        if not isinstance(model, nnx.Module):
            raise ExplanationError(
                f"model: expected an NNX module to load into, got {type(model).__name__}"
            )
        _check_arch(path, arch, header.get("config"), model)
    try:
        _vgg.load_linen_variables(model, variables)
    except ExplanationError as e:
        raise ExplanationError(f"path: checkpoint {path} does not fit the model: {e}") from e
    model.eval()
    return model


def load_linen(path: str | os.PathLike) -> LinenModel:
    """Load a VGG/ResNet checkpoint as ``jaxlrp.linen(module, variables)`` (Linen)."""
    header, variables = _read(path)
    arch = header.get("architecture")
    if arch not in ARCHITECTURES:
        raise ExplanationError(
            f"path: {path} holds a {arch or 'custom'} model; load_linen supports "
            f"{sorted(ARCHITECTURES)}"
        )
    nnx_model = _build(ARCHITECTURES[arch][0], header, path)
    try:
        _vgg.load_linen_variables(nnx_model, variables)
    except ExplanationError as e:
        raise ExplanationError(f"path: checkpoint {path} does not fit the model: {e}") from e
    module = ARCHITECTURES[arch][1](**_linen_kwargs(header["config"]))
    arrays = _vgg.nnx_to_linen_variables(nnx_model)
    return LinenModel(module, arrays, (("train", False),))


# ----------------------------------------------------------------------------- internals


def _describe(model: Any) -> tuple[str | None, dict | None, dict]:
    """(architecture name, config, Linen-layout variables) of ``model``."""
    if isinstance(model, LinenModel):
        model = (model.module, model.variables)
    if isinstance(model, tuple) and len(model) == 2:
        module, variables = model
        for name, (_, linen_cls) in ARCHITECTURES.items():
            if isinstance(module, linen_cls):
                return name, module.config(), _plain(variables)
        raise ExplanationError(
            f"model: save supports Linen VGGLinen/ResNetLinen pairs, got {type(module).__name__}"
        )
    if isinstance(model, nnx.Module):
        for name, (nnx_cls, _) in ARCHITECTURES.items():
            if type(model) is nnx_cls:
                return name, model.config(), _vgg.nnx_to_linen_variables(model)
        return None, None, _vgg.nnx_to_linen_variables(model)
    raise ExplanationError(
        f"model: expected an NNX module or a (linen_module, variables) pair, "
        f"got {type(model).__name__}"
    )


def _plain(tree: Any) -> dict:
    if hasattr(tree, "items"):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def _read(path: str | os.PathLike) -> tuple[dict, dict]:
    p = Path(path)
    if not p.is_file():
        raise ExplanationError(f"path: no checkpoint file at {str(p)!r}")
    raw = p.read_bytes()
    bad = f"path: {str(p)!r} is not a valid jaxlrp checkpoint"
    try:
        outer = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # noqa: BLE001 -- any decoding failure means a corrupt file
        raise ExplanationError(f"{bad} (corrupt or truncated: {type(e).__name__})") from e
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise ExplanationError(f"{bad} (no {FORMAT!r} marker)")
    if outer.get("version") != VERSION:
        raise ExplanationError(
            f"{bad} (format version {outer.get('version')!r}, this jaxlrp reads {VERSION})"
        )
    state, digest = outer.get("state"), outer.get("sha256")
    if not isinstance(state, bytes) or hashlib.sha256(state).hexdigest() != digest:
        raise ExplanationError(f"{bad} (corrupt: checksum mismatch)")
    try:
        header = json.loads(outer["header"])
        variables = serialization.msgpack_restore(state)
    except Exception as e:  # noqa: BLE001
        raise ExplanationError(f"{bad} (corrupt header or state: {type(e).__name__})") from e
    if not isinstance(header, dict) or not isinstance(variables, dict):
        raise ExplanationError(f"{bad} (unexpected header or state structure)")
    return header, variables


def _build(cls: type, header: dict, path: Any) -> nnx.Module:
    try:
        return cls(**header["config"], rngs=nnx.Rngs(0))
    except (TypeError, KeyError, ExplanationError) as e:
        raise ExplanationError(
            f"path: {path} has an unusable {header.get('architecture')} config "
            f"{header.get('config')!r}: {e}"
        ) from e


def _check_arch(path: Any, arch: str | None, config: dict | None, model: nnx.Module) -> None:
    for name, (nnx_cls, _) in ARCHITECTURES.items():
        if type(model) is nnx_cls:
            if arch != name:
                raise ExplanationError(
                    f"path: {path} holds a {arch or 'custom'} model, model= is a {name}"
                )
            if config is not None and config != model.config():
                diff = sorted(k for k in set(config) | set(model.config())
                              if config.get(k) != model.config().get(k))
                k = diff[0]
                raise ExplanationError(
                    f"path: {path} holds a {name} with {k}={config.get(k)!r}, "
                    f"model= has {k}={model.config().get(k)!r}"
                )
            return
    if arch is not None:
        raise ExplanationError(
            f"path: {path} holds a {arch} model, model= is a {type(model).__name__}"
        )


def _linen_kwargs(config: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def _jaxlrp_version() -> str:
    try:
        from importlib.metadata import version

        return version("jaxlrp")
    except Exception:  # noqa: BLE001
        return "unknown"
