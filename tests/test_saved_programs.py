"""The command line's saved programs: traced once, reused by later runs, keyed safely."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlrp.cli.explain import Plan, make_runner
from jaxlrp.cli.saved_programs import SUFFIX, SavedRunner, program_key
from jaxlrp.models import VGG

PLAN = Plan("hybrid", "predicted", True, {}, {}).with_default_composite("paper")


def _model(seed: int = 0, widths=(6, 8)) -> VGG:
    return VGG(num_classes=5, widths=widths, dense=(12,), input_size=16, rngs=nnx.Rngs(seed))


def _x(b: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((b, 16, 16, 3), dtype=np.float32)


def _close(a, b) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-6)


def _key(plan, model, x) -> str:
    graphdef, state = nnx.split(model)
    return program_key(plan, graphdef, jax.tree.leaves(state), jnp.asarray(x))


def test_a_saved_program_is_reused_without_tracing(tmp_path):
    run = make_runner(PLAN).run
    model, x = _model(), _x()
    first = SavedRunner(run, PLAN, tmp_path)
    out1 = first(model, x)
    key = _key(PLAN, model, x)
    assert first.events == [("saved", key)]
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}{SUFFIX}"]

    traced = []

    def counting(m, xx):
        traced.append(1)
        return run(m, xx)

    second = SavedRunner(counting, PLAN, tmp_path)  # a new process, as far as it knows
    other = _model(seed=1)  # the same structure, other weights: the same program
    out2 = second(other, x)
    assert second.events == [("loaded", key)]
    assert traced == []
    _close(out1, jax.jit(run)(model, x))
    _close(out2, jax.jit(run)(other, x))
    assert not np.allclose(np.asarray(out1[0]), np.asarray(out2[0]))


def test_the_key_follows_what_the_trace_depends_on():
    model, x = _model(), _x()
    key = _key(PLAN, model, x)
    assert _key(PLAN, _model(seed=3), x) == key  # weights are arguments
    assert _key(PLAN, model, _x(4)) != key  # batch shape
    assert _key(PLAN, _model(widths=(6, 6)), x) != key  # structure
    lrp = Plan("lrp", "predicted", False, {"composite": "paper"}, {})
    assert _key(lrp, model, x) != key  # method and options
    assert _key(Plan("hybrid", 2, True, {}, {}).with_default_composite("paper"), model,
                x) != key  # target


def test_an_unreadable_file_is_traced_again_and_replaced(tmp_path):
    run = make_runner(PLAN).run
    model, x = _model(), _x()
    key = _key(PLAN, model, x)
    (tmp_path / f"{key}{SUFFIX}").write_bytes(b"not a program")
    runner = SavedRunner(run, PLAN, tmp_path)
    _close(runner(model, x), jax.jit(run)(model, x))
    assert runner.events == [("unreadable", key), ("saved", key)]
    assert SavedRunner(run, PLAN, tmp_path)._load(tmp_path, key, jax.tree.leaves(
        nnx.state(model)), jnp.asarray(x)) is not None


def test_what_cannot_be_exported_runs_through_jit(tmp_path):
    def with_callback(m, xx):
        logits = m(xx)
        return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(
            logits.shape, logits.dtype), logits)

    model, x = _model(), _x()
    runner = SavedRunner(with_callback, PLAN, tmp_path)
    np.testing.assert_allclose(np.asarray(runner(model, x)), 2 * np.asarray(model(x)),
                               rtol=1e-6)
    assert [e for e, _ in runner.events] == ["not exportable"]
    assert list(tmp_path.iterdir()) == []


def test_no_folder_means_plain_jit(tmp_path, monkeypatch):
    run = make_runner(PLAN).run
    model, x = _model(), _x()
    runner = SavedRunner(run, PLAN, None)
    _close(runner(model, x), jax.jit(run)(model, x))
    assert runner.events == []
    # "active" (the default): a subfolder of the compilation cache's folder, if any
    import jaxlrp.cli.saved_programs as S

    for value, want in ((None, None), (str(tmp_path), tmp_path / "jaxlrp-exported")):
        monkeypatch.setattr(S.jax, "config", type("C", (), {
            "jax_compilation_cache_dir": value}))
        assert SavedRunner(run, PLAN)._folder() == want
        monkeypatch.undo()


@pytest.mark.slow
def test_second_command_line_run_loads_the_program(tmp_path):
    """Two ``jaxlrp explain`` processes: the first saves the program, the second uses it
    (the file is not rewritten) and writes the same map."""
    env = {k: v for k, v in os.environ.items() if k != "JAXLRP_NO_COMPILATION_CACHE"}
    env.update({"JAX_PLATFORMS": "cpu", "JAXLRP_COMPILATION_CACHE_DIR": str(tmp_path / "cc")})
    photo = os.path.join(os.path.dirname(__file__), "..", "jaxlrp", "assets", "photos",
                         "chelsea.jpg")
    maps = []
    for i in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "jaxlrp", "explain", photo, "--model", "default",
             "--no-progress", "--out", str(tmp_path / f"o{i}")],
            env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        saved = sorted((tmp_path / "cc" / "jaxlrp-exported").glob(f"*{SUFFIX}"))
        assert len(saved) == 1
        if i == 0:
            stamp = saved[0].stat().st_mtime_ns
        maps.append(np.load(tmp_path / f"o{i}" / "chelsea_hybrid.npy"))
    assert saved[0].stat().st_mtime_ns == stamp
    np.testing.assert_allclose(maps[0], maps[1], rtol=0, atol=1e-6)
