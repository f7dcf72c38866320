"""A persistent compilation cache for fast first calls, through JAX's own setting.

JAX can keep compiled XLA executables on disk (``jax_compilation_cache_dir``). A
process that compiles the same computation again (the same model, input shape and
explainer options) then loads it instead of compiling it. jaxlrp's command line turns
this on by default; the library only does so on request::

    import jaxlrp
    jaxlrp.enable_compilation_cache()            # ~/.cache/jaxlrp/xla, or $XDG_CACHE_HOME

=============================  ====================================================
environment variable           effect
=============================  ====================================================
``JAXLRP_NO_COMPILATION_CACHE``  ``1``/``true``/``yes``: never enable it (the CLI's
                                 ``--no-compilation-cache`` does the same)
``JAXLRP_COMPILATION_CACHE_DIR`` the folder to use instead of the default
=============================  ====================================================

Only what XLA compiles is cached: tracing the model in Python still happens in every
new process. The command line also keeps its traced programs (``jax.export``) in a
subfolder, ``jaxlrp-exported``, so that its second runs skip the tracing too
(:mod:`jaxlrp.cli.saved_programs`).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxlrp.errors import ExplanationError

ENV_DISABLE = "JAXLRP_NO_COMPILATION_CACHE"
ENV_DIR = "JAXLRP_COMPILATION_CACHE_DIR"
_TRUE = ("1", "true", "yes", "on")


def disabled_by_env() -> bool:
    """Whether ``JAXLRP_NO_COMPILATION_CACHE`` asks for no persistent cache."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in _TRUE


def default_cache_dir() -> Path:
    """``$JAXLRP_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxlrp/xla``, else
    ``~/.cache/jaxlrp/xla``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxlrp" / "xla"


def enable_compilation_cache(
    path: str | os.PathLike | None = None, *, min_compile_time_secs: float = 0.0
) -> Path | None:
    """Keep compiled executables in ``path`` (default :func:`default_cache_dir`).

    Args:
      path: the cache folder; created if missing.
      min_compile_time_secs: cache only computations that took at least this long to
        compile (JAX's default is 1 s; jaxlrp's many sub-second compiles add up, so 0).
    Returns:
      The folder in use, or None when ``JAXLRP_NO_COMPILATION_CACHE`` disables it.
    """
    if disabled_by_env():
        return None
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplanationError(
            f"path: expected a writable folder for the compilation cache, got {str(folder)!r} "
            f"({e.strerror}); set {ENV_DIR} or {ENV_DISABLE}=1"
        ) from e
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
