"""``jaxlrp info``: versions, devices and the available models, datasets and explainers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jaxlrp import explainers as _explainers
from jaxlrp._lrp.composites import PRESETS
from jaxlrp.cli.common import _Formatter, _say
from jaxlrp.models.registry import CHECKPOINT_COMPOSITE, SHIPPED


def add_parser(sub: Any) -> None:
    """Add the ``info`` subcommand to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "info", help="versions, devices and the available models, datasets and explainers",
        description="Print the versions of jaxlrp and its main dependencies, the JAX "
                    "devices, and the models, datasets, explainers and LRP composites "
                    "available offline.",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """``jaxlrp info``: versions, devices, available components."""
    from importlib import metadata

    import jax

    from jaxlrp import photos
    from jaxlrp.models import default as default_mod
    from jaxlrp.models import efficientnet as eff

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    _say("versions:")
    _say(f"  python {sys.version.split()[0]}")
    for pkg in ("jaxlrp", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib",
                "tensorflow-datasets"):
        _say(f"  {pkg} {version(pkg)}")
    _say(f"devices: {', '.join(str(d) for d in jax.devices())} "
         f"(default backend: {jax.default_backend()})")
    _say("models (--model):")
    _say(f"  efficientnet-lite0  ImageNet, 224x224, weights "
         f"{'shipped' if eff.weights_path().is_file() else 'MISSING'}")
    shipped = default_mod.DEFAULT_PATH.is_file()
    _say(f"  default             VGG on the embedded shapes, 64x64, checkpoint "
         f"{'shipped' if shipped else 'missing (run: jaxlrp train)'}")
    _say("  PATH                a jaxlrp checkpoint (VGG or ResNet), e.g. from 'jaxlrp train'")
    _say("datasets: embedded (8 shape classes, 64x64, masks; no download), tfds:NAME "
         "(TensorFlow Datasets, needs the data locally)")
    _say(f"bundled photos: {', '.join(photos.names())}")
    _say(f"explainers (--method): {', '.join(_explainers.names())}")
    defaults = ", ".join(f"{e.name} {e.composite}" for e in SHIPPED.values())
    _say(f"LRP composites (--composite): {', '.join(sorted(PRESETS))} (default per model: "
         f"{defaults}, PATH {CHECKPOINT_COMPOSITE})")
    return 0
