"""The ``jaxlrp`` command line: ``info``, ``train``, ``explain``, ``demo`` and ``evaluate``.

Run ``jaxlrp --help`` or ``jaxlrp <command> --help``. Exit codes:

* 0 -- everything succeeded;
* 1 -- the command ran but some inputs failed (``explain``: unreadable or non-image
  files, listed on stderr and in ``<out>/errors.json``; the other files are written);
* 2 -- usage error: a bad option value, an unknown model or method name, a missing
  checkpoint. A one-line message names the option and what was expected.

One module per command (:mod:`.explain`, :mod:`.demo`, :mod:`.evaluate`, :mod:`.train`,
:mod:`.info`), each with ``add_parser(sub)`` and its ``cmd_*`` function; shared parsing
and messages in :mod:`.common`; the one ``load_model`` in :mod:`.loading`. Matplotlib,
the models and the data are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxlrp.cli import demo, evaluate, explain, info, train
from jaxlrp.cli.common import (
    PROG,
    _fail,
    _Formatter,
    _Parser,
    hybrid_cams,
    methods,
    panel_title,
)
from jaxlrp.cli.explain import Plan, file_token, make_plan, make_runner, unique_stems
from jaxlrp.cli.loading import LoadedModel, load_model
from jaxlrp.compilation_cache import (
    ENV_DIR,
    ENV_DISABLE,
    default_cache_dir,
    enable_compilation_cache,
)
from jaxlrp.errors import ExplanationError


def build_parser() -> argparse.ArgumentParser:
    """The full ``jaxlrp`` parser tree: one subcommand per module of this package."""
    parser = _Parser(
        prog=PROG,
        description="Explain image classifiers with Grad-CAM, LRP and their hybrid "
                    "(arXiv 2405.12175), and score the explanations.",
        epilog="Exit codes: 0 success; 1 some inputs failed (reported, the rest written); "
               "2 usage error. Start with 'jaxlrp demo'.",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--no-compilation-cache", action="store_true",
        help="do not keep compiled XLA code and traced programs on disk between runs "
             "(default: keep them in "
             f"{default_cache_dir()}; the environment variable {ENV_DISABLE}=1 does the "
             f"same, and {ENV_DIR} moves it)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in (info, train, explain, demo, evaluate):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if not args.no_compilation_cache:
            enable_compilation_cache()  # fast second runs; None when the env var disables it
        return int(args.func(args))
    except ExplanationError as e:
        _fail(args.command, str(e))
        return 2
    except OSError as e:  # an unwritable --out, a full disk: no traceback, exit 1
        _fail(args.command, f"{type(e).__name__}: {e}")
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The ``jaxlrp`` console script and ``python -m jaxlrp``: :func:`main`, then exit.

    After the atexit handlers have run and stdout and stderr are flushed, the process
    ends with ``os._exit``: Python's own finalisation (tearing down the ~1,500 modules that
    jax, flax and matplotlib import, and XLA's client) adds about 0.4 s to every command,
    a tenth of a cached ``jaxlrp explain``, and writes nothing.
    """
    import atexit
    import os

    code = main()
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a closed pipe: nothing more can be said
        pass
    os._exit(code)


__all__ = ["LoadedModel", "Plan", "build_parser", "file_token", "hybrid_cams", "load_model",
           "main", "run", "methods", "panel_title",
           "make_plan", "make_runner", "unique_stems"]
