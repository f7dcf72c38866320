"""What every ``jaxlrp`` command shares: the parser classes, argument types, messages and
the names the options accept."""

from __future__ import annotations

import argparse
import sys

from jaxlrp import explainers as _explainers
from jaxlrp.models.registry import SHIPPED

PROG = "jaxlrp"

MODEL_NAMES = tuple(SHIPPED)
"""Built-in models for ``--model`` (besides a checkpoint path), from
:data:`jaxlrp.models.registry.SHIPPED`."""


def methods() -> tuple[str, ...]:
    """Explainer names for ``--method``: every registered explainer and CAM method."""
    return _explainers.choices()


def hybrid_cams() -> tuple[str, ...]:
    """CAMs the hybrid can use (``--cam``): every registered CAM method with a map."""
    from jaxlrp._hybrid import cam_methods

    return cam_methods()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
"""File suffixes picked up when a folder is given to ``jaxlrp explain``."""

panel_title = _explainers.title
"""Figure panel title of an explainer, from its registry entry (``gradcam++`` -> Grad-CAM++)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own; shows non-trivial defaults."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Formatter, self)._fill_text(par, width, indent)
                           for par in text.split("\n\n"))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def positive_int(text: str) -> int:
    """argparse type: an int > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def target_arg(text: str) -> str | int:
    """argparse type: ``predicted`` or a class index >= 0."""
    if text == "predicted":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted' or a class index, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a class index >= 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _fail(command: str, message: str) -> None:
    print(f"{PROG} {command}: error: {' '.join(message.split())}", file=sys.stderr)


def _warn(message: str) -> None:
    """A line on stderr that does not break a running tqdm bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _say(message: str) -> None:
    print(message, flush=True)


def _bar(total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
