"""jaxlrp.distributed.explain_dataset: sharding, padding, compile-once, multi-process.

The sharded runs happen in subprocesses, because the number of forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) must be set before jax is
imported. Each subprocess prints one JSON line of measured facts; the tests assert them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import nnx

from jaxlrp import cam, distributed
from jaxlrp.errors import ExplanationError
from jaxlrp.models.vgg import VGG

# Tiny VGG on 16x16 images: compiles in about a second.
SETUP = """
import json, os, sys, tempfile
import jax, numpy as np
from flax import nnx
from jaxlrp import cam, distributed
from jaxlrp._lrp import lrp
from jaxlrp.models.vgg import VGG

compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: compiles.append(kw.get("fun_name"))
    if event == "/jax/core/compile/backend_compile_duration" else None)

def model():
    return VGG(num_classes=5, widths=(4, 8), dense=(16,), input_size=16, rngs=nnx.Rngs(0))

def data(n):
    rng = np.random.default_rng(1)
    return (rng.random((n, 16, 16, 3), dtype=np.float32),
            rng.integers(0, 5, n).astype(np.int32))

def lrp_explain(m, x, t):
    return lrp(m, x, t)
"""

SHARDED = SETUP + """
m = model()
x, y = data(21)   # 21 = 2 full chunks of 8 + a partial chunk of 5
res = {"devices": jax.device_count()}
one = distributed.batch_mesh(jax.devices()[:1])
for name, fn in (("cam", cam.gradcam_pp), ("lrp", lrp_explain)):
    direct = np.asarray(fn(m, x, y))
    before = len(compiles)
    sharded = distributed.explain_dataset(fn, m, (x, y), chunk_size=8, progress=False)
    res[name + "_compiles"] = len(compiles) - before
    before = len(compiles)
    again = distributed.explain_dataset(fn, m, (x, y), chunk_size=8, progress=False)
    res[name + "_compiles_again"] = len(compiles) - before
    single = distributed.explain_dataset(fn, m, (x, y), chunk_size=8, mesh=one,
                                         progress=False)
    res[name + "_shape"] = list(sharded.shape)
    res[name + "_vs_single"] = float(np.abs(sharded - single).max())
    res[name + "_vs_direct"] = float(np.abs(sharded - direct).max())
    res[name + "_again"] = float(np.abs(sharded - again).max())
    res[name + "_scale"] = float(np.abs(direct).max())
# predicted targets, an iterable of uneven batches, and a memory-mapped output
pred = np.asarray(cam.gradcam_pp(m, x))
batches = [(x[a:b], y[a:b]) for a, b in ((0, 3), (3, 13), (13, 14), (14, 21))]
stream = distributed.explain_dataset(cam.gradcam_pp, m, iter(batches), chunk_size=8,
                                     target="predicted", progress=False)
res["stream_vs_direct"] = float(np.abs(stream - pred).max())
res["stream_shape"] = list(stream.shape)
path = os.path.join(tempfile.mkdtemp(), "maps.npy")
mm = distributed.explain_dataset(cam.gradcam_pp, m, x, chunk_size=8, target="predicted",
                                 out=path, progress=False)
res["out_vs_direct"] = float(np.abs(np.load(path) - pred).max())
res["out_is_memmap"] = isinstance(mm, np.memmap)
print("RESULT " + json.dumps(res))
"""

MULTI = SETUP + """
pid, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2,
                           process_id=pid, initialization_timeout=60)
m = model()
x, y = data(23)   # 12 + 11 examples per process, chunks of 8 (4 devices each)
out = distributed.explain_dataset(cam.gradcam_pp, m, (x, y), chunk_size=8, progress=False)
res = {"pid": jax.process_index(), "processes": jax.process_count(),
       "devices": jax.device_count(), "local": jax.local_device_count()}
if out is None:
    res["none"] = True
else:
    res["err"] = float(np.abs(out - np.asarray(cam.gradcam_pp(m, x, y))).max())
    res["shape"] = list(out.shape)
print("RESULT " + json.dumps(res), flush=True)
jax.distributed.shutdown()
"""


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def sharded() -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SHARDED)], env=_env(8),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _result(proc.stdout)


@pytest.mark.slow
def test_eight_devices_are_used(sharded):
    assert sharded["devices"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cam", "lrp"])
def test_sharded_equals_single_device(sharded, name):
    # float32; the same XLA computation on 1 device vs 8 shards of the batch: <= 1e-6
    # (relative to the map scale, which is 1 for CAM maps and ~1e-2 for LRP relevance).
    scale = max(sharded[name + "_scale"], 1e-12)
    assert sharded[name + "_vs_single"] <= 1e-6 * max(1.0, scale)
    assert sharded[name + "_vs_direct"] <= 1e-6 * max(1.0, scale)
    assert sharded[name + "_again"] == 0.0


@pytest.mark.parametrize("name", ["cam", "lrp"])
def test_partial_last_chunk_kept_and_padding_dropped(sharded, name):
    assert sharded[name + "_shape"][0] == 21


@pytest.mark.parametrize("name", ["cam", "lrp"])
def test_compiles_once_across_chunks(sharded, name):
    # 3 chunks (the last padded) -> exactly one backend compilation, and none on a
    # second call with the same shapes (the jitted function is cached).
    assert sharded[name + "_compiles"] == 1
    assert sharded[name + "_compiles_again"] == 0


def test_iterable_and_memmap_output(sharded):
    assert sharded["stream_shape"] == [21, 16, 16]
    assert sharded["stream_vs_direct"] <= 1e-6
    assert sharded["out_vs_direct"] <= 1e-6
    assert sharded["out_is_memmap"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback():
    """Two jax.distributed processes (4 CPU devices each, gloo collectives) on 127.0.0.1."""
    port = str(_free_port())
    code = textwrap.dedent(MULTI)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), port], env=_env(4),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            outs.append(_result(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    first, second = sorted(outs, key=lambda r: r["pid"])
    assert first["processes"] == 2 and first["devices"] == 8 and first["local"] == 4
    assert first["shape"] == [23, 16, 16]
    assert first["err"] <= 1e-6
    assert second.get("none") is True


# ----------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def small():
    m = VGG(num_classes=5, widths=(4, 8), dense=(16,), input_size=16, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    x = rng.random((5, 16, 16, 3), dtype=np.float32)
    return m, x, rng.integers(0, 5, 5).astype(np.int32)


def test_target_array_and_dataset(small):
    from jaxlrp.data import Dataset

    m, x, y = small
    ds = Dataset(images=x, labels=y, masks=None, class_names=tuple("abcde"))
    got = distributed.explain_dataset(cam.gradcam, m, ds, chunk_size=2, progress=False)
    other = (y + 1) % 5
    got2 = distributed.explain_dataset(cam.gradcam, m, x, chunk_size=4, target=other,
                                       progress=False)
    np.testing.assert_allclose(got, np.asarray(cam.gradcam(m, x, y)), atol=1e-6)
    np.testing.assert_allclose(got2, np.asarray(cam.gradcam(m, x, other)), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, data_fn, match",
    [
        ({"target": "label"}, lambda x, y: x, "needs labels"),
        ({"target": "labels"}, lambda x, y: (x, y), "target"),
        ({"target": np.zeros(3, np.int32)}, lambda x, y: x, r"shape \(5,\)"),
        ({"chunk_size": 0}, lambda x, y: (x, y), "chunk_size"),
        ({}, lambda x, y: (x, y + 10), r"\[0, 5\)"),
        ({}, lambda x, y: (np.where(np.arange(5)[:, None, None, None] == 3, np.nan, x), y),
         r"example\(s\) \[3\]"),
        ({}, lambda x, y: ((x * 255).astype(np.uint8), y), "floating"),
        ({}, lambda x, y: x[0], "shape"),
        ({}, lambda x, y: 3, "data"),
    ],
)
def test_bad_input_raises(small, kwargs, data_fn, match):
    m, x, y = small
    with pytest.raises(ExplanationError, match=match):
        distributed.explain_dataset(cam.gradcam, m, data_fn(x, y), progress=False,
                                    **{"chunk_size": 4, **kwargs})


def test_bad_explainer_and_mesh(small):
    m, x, y = small
    with pytest.raises(ExplanationError, match="explain"):
        distributed.explain_dataset("gradcam", m, (x, y), progress=False)
    with pytest.raises(ExplanationError, match="mesh"):
        distributed.explain_dataset(cam.gradcam, m, (x, y), mesh="batch", progress=False)
