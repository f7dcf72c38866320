"""The persistent compilation cache: enabled on request, off by environment variable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from jaxlrp.errors import ExplanationError

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    import jaxlrp
    folder = jaxlrp.enable_compilation_cache(sys.argv[1])
    print("FOLDER", folder)
    f = jax.jit(lambda x: jnp.tanh(x) @ x.T + 3.0)
    f(jnp.ones((17, 17))).block_until_ready()
    """
)


def _run(tmp_path, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "JAXLRP_NO_COMPILATION_CACHE"}
    env.update({"JAX_PLATFORMS": "cpu", **env_extra})
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cc")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_enabled_cache_writes_executables(tmp_path):
    stdout = _run(tmp_path, {})
    assert f"FOLDER {tmp_path / 'cc'}" in stdout
    assert any((tmp_path / "cc").iterdir()), "no compiled executable was written"


def test_environment_variable_disables_it(tmp_path):
    stdout = _run(tmp_path, {"JAXLRP_NO_COMPILATION_CACHE": "1"})
    assert "FOLDER None" in stdout
    assert not (tmp_path / "cc").exists()


def test_default_dir_follows_environment(monkeypatch, tmp_path):
    from jaxlrp.compilation_cache import default_cache_dir

    monkeypatch.delenv("JAXLRP_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "jaxlrp" / "xla"
    monkeypatch.setenv("JAXLRP_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    from jaxlrp.compilation_cache import enable_compilation_cache

    monkeypatch.delenv("JAXLRP_NO_COMPILATION_CACHE", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExplanationError, match="path: expected a writable folder"):
        enable_compilation_cache(blocker / "sub")


@pytest.mark.parametrize("flag", [False, True])
def test_cli_enables_the_cache_unless_told_not_to(monkeypatch, flag):
    import jaxlrp.cli as cli

    calls = []
    monkeypatch.setattr(cli, "enable_compilation_cache", lambda: calls.append(1))
    argv = (["--no-compilation-cache"] if flag else []) + ["info"]
    assert cli.main(argv) == 0
    assert calls == ([] if flag else [1])
    assert "--no-compilation-cache" in cli.build_parser().format_help()
