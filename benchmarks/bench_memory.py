"""Peak memory of the jitted hybrid against batch size, with and without batch chunks.

For each workload (VGG16 at 224x224 by default; the default small model; the ViT of
``jaxlrp.models.vit`` when that module is present) and each batch size, the jitted
hybrid ``(state, x) -> maps`` is compiled plainly and with
``jaxlrp._lrp.memory.map_chunks`` over chunks of ``--chunk`` examples (what
``lrp(..., batch_chunk=n)`` and ``jaxlrp._lrp.memory.chunked(jaxlrp.hybrid, n)`` do).
Reported per configuration:

* XLA's buffer plan of the compiled function (``compiled.memory_analysis()``): the
  temporary bytes (activations kept for the relevance pass, workspaces), the argument
  bytes (parameters + images) and the output bytes. This is deterministic: it does not
  depend on machine load, so it is a valid figure on a shared machine;
* on a GPU, also the device's ``peak_bytes_in_use`` after one run (reset per process
  is not possible in JAX, so each configuration's peak is read in a fresh subprocess
  with ``--measure-peak``);
* with ``--time``, the median run time (the price of chunking: less parallelism per step).

Usage::

    python benchmarks/bench_memory.py --tiny --name scratch_memory    # small model, seconds
    python benchmarks/bench_memory.py --quick                         # VGG16 batch 1, 2, 4
    python benchmarks/bench_memory.py --time                          # VGG16 batch 1..32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402
import _floor as F  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlrp._hybrid import hybrid  # noqa: E402
from jaxlrp._lrp.memory import map_chunks  # noqa: E402


def build(workload: str):
    """(model, image shape (H, W, C)) or None when the workload's module is missing."""
    if workload == "vgg16":
        return U.VGG16(rngs=nnx.Rngs(0)), (224, 224, 3)
    if workload == "small":
        model, _ = U.small_model()
        return model, (64, 64, 3)
    try:
        from jaxlrp.models.vit import build_vit
    except ImportError as err:
        print(f"[vit] skipped: jaxlrp.models.vit is not in this checkout yet ({err})", flush=True)
        return None
    model = build_vit(0)
    return model, (*model.input_size, model.in_channels)


def hybrid_fn(model, chunk: int | None):
    graphdef, _ = nnx.split(model)

    def fn(state, x):
        m = nnx.merge(graphdef, state)
        if chunk is None:
            return hybrid(m, x, "predicted")
        return map_chunks(lambda a, _t: hybrid(m, a, "predicted"), chunk, x, None)

    return jax.jit(fn)


def plan(model, shape, batch: int, chunk: int | None, timed: bool, reps: int) -> dict:
    _, state = nnx.split(model)
    x = np.random.default_rng(batch).random((batch, *shape), dtype=np.float32)
    fn = hybrid_fn(model, chunk)
    t0 = time.perf_counter()
    compiled = fn.lower(state, x).compile()
    row = {"batch": batch, "chunk": chunk, "compile_s": time.perf_counter() - t0}
    ma = compiled.memory_analysis()
    for k in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
              "generated_code_size_in_bytes"):
        row[k] = int(getattr(ma, k, 0) or 0) if ma is not None else None
    if ma is not None:
        row["total_mib"] = (row["temp_size_in_bytes"] + row["argument_size_in_bytes"]
                            + row["output_size_in_bytes"]) / 2**20
        row["temp_mib"] = row["temp_size_in_bytes"] / 2**20
    if timed:
        t = U.timeit(lambda: compiled(state, x), reps=reps)
        row["median_s"], row["images_per_s"] = t["median"], batch / t["median"]
        row["first_s"] = row["compile_s"] + t["first"]
    return row


def add_floor(row: dict, model, shape, reps: int, floors: dict) -> None:
    """floor(hybrid) at the row's batch (``_floor.py``; cached per batch in ``floors``) and
    the row's time over it, plain and with compile time (first calls)."""
    b = row["batch"]
    if b not in floors:
        x = np.random.default_rng(b).random((b, *shape), dtype=np.float32)
        floors[b] = F.time_floor(model, x, "hybrid", reps)
    fl = floors[b]
    row["floor_s"], row["over_floor"] = fl["median"], row["median_s"] / fl["median"]
    row["over_floor_incl_compile"] = row["first_s"] / fl["first"]


def peak_in_subprocess(workload: str, batch: int, chunk: int | None) -> int | None:
    """Device peak bytes of one run in a fresh process (None where unsupported)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import bench_memory as B, jax;"
        "import numpy as np; from flax import nnx;"
        "m, s = B.build(sys.argv[2]); b = int(sys.argv[3]);"
        "c = None if sys.argv[4] == 'none' else int(sys.argv[4]);"
        "x = np.random.default_rng(b).random((b, *s), dtype=np.float32);"
        "jax.block_until_ready(B.hybrid_fn(m, c)(nnx.split(m)[1], x));"
        "st = jax.devices()[0].memory_stats() or {};"
        "print('PEAK', json.dumps(st.get('peak_bytes_in_use')))")
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", code, here, workload, str(batch),
                           "none" if chunk is None else str(chunk)],
                          capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")]
    return json.loads(lines[-1][5:]) if lines else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small model, batches 2 and 8")
    ap.add_argument("--quick", action="store_true", help="VGG16 batches 1, 2, 4")
    ap.add_argument("--workload", nargs="+", choices=("vgg16", "small", "vit"), default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--chunk", type=int, default=None, help="examples per chunk")
    ap.add_argument("--time", action="store_true", help="also time each configuration")
    ap.add_argument("--measure-peak", action="store_true",
                    help="device peak bytes per configuration, each in a fresh process")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--name", default="bench_memory")
    args = ap.parse_args(argv)
    workloads = args.workload or (["small"] if args.tiny else ["vgg16", "vit"])
    batches = args.batches or ([2, 8] if args.tiny else [1, 2, 4] if args.quick
                               else [1, 2, 4, 8, 16, 32])
    chunk = args.chunk or (2 if args.tiny else 1 if args.quick else 4)
    reps = args.reps or (2 if args.tiny or args.quick else 3)
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['platform']}, load {info['loadavg']}",
          flush=True)
    t0 = time.time()
    rows = []
    for w in workloads:
        built = build(w)
        if built is None:
            continue
        model, shape = built
        floors: dict = {}
        for b in batches:
            for c in (None, chunk):
                if c is not None and c >= b:
                    continue
                r = {"workload": w, **plan(model, shape, b, c, args.time, reps)}
                if args.time:
                    add_floor(r, model, shape, reps, floors)
                if args.measure_peak:
                    r["device_peak_bytes"] = peak_in_subprocess(w, b, c)
                rows.append(r)
                extra = (f", {r['images_per_s']:.1f} img/s, {r['over_floor']:.2f}x its floor"
                         if "images_per_s" in r else "")
                print(f"  {w:6s} batch {b:4d} chunk {str(c):4s}: XLA temp "
                      f"{r.get('temp_mib', float('nan')):9.1f} MiB, total "
                      f"{r.get('total_mib', float('nan')):9.1f} MiB{extra}", flush=True)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_s"] = round(time.time() - t0, 1)
    ratios = {}
    for w in {r["workload"] for r in rows}:
        plain = [r for r in rows if r["workload"] == w and r["chunk"] is None]
        if len(plain) >= 2 and plain[0].get("temp_mib"):
            ratios[f"{w}_temp_growth_per_example_mib"] = (
                (plain[-1]["temp_mib"] - plain[0]["temp_mib"])
                / (plain[-1]["batch"] - plain[0]["batch"]))
        big = max((r["batch"] for r in rows if r["workload"] == w and r["chunk"]), default=None)
        if big:
            p = next(r for r in rows if r["workload"] == w and r["batch"] == big
                     and r["chunk"] is None)
            c = next(r for r in rows if r["workload"] == w and r["batch"] == big and r["chunk"])
            ratios[f"{w}_batch{big}_chunked_over_plain_temp"] = c["temp_mib"] / p["temp_mib"]
            if "median_s" in c:
                ratios[f"{w}_batch{big}_chunked_over_plain_time"] = c["median_s"] / p["median_s"]
    figures = {"machine": info, "args": vars(args), "rows": rows, "ratios": ratios}
    head = ["workload", "batch", "chunk", "XLA temp MiB", "XLA total MiB", "compile s"]
    cols = ["workload", "batch", "chunk", "temp_mib", "total_mib", "compile_s"]
    if args.time:
        head += ["median s", "images/s", "floor s", "/ floor", "/ floor incl. compile"]
        cols += ["median_s", "images_per_s", "floor_s", "over_floor", "over_floor_incl_compile"]
    if args.measure_peak:
        head += ["device peak MiB"]
    table = []
    for r in rows:
        row = [r.get(k, "") if r.get(k) is not None else "-" for k in cols]
        if args.measure_peak:
            pk = r.get("device_peak_bytes")
            row.append(pk / 2**20 if pk else "-")
        table.append(row)
    md = ["# bench_memory", "", U.machine_md(info), "",
          f"Command: `python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}`", "",
          U.table(table, head), "",
          "XLA temp = the compiled function's temporary buffers (activations kept for the "
          "relevance pass, workspaces); total adds parameters, images and maps. Chunked rows "
          f"run the hybrid {chunk} examples at a time (`jax.lax.map`) inside one function."
          + (" floor = floor(hybrid) of `_floor.py` at the row's batch, unchunked; incl. "
             "compile = the row's compile + first call over the floor's first call."
             if args.time else ""), "",
          *[f"- {k}: {v:.3g}" for k, v in sorted(ratios.items())]]
    U.write_results(args.name, figures, "\n".join(md))
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}")
    print("ratios:")
    for k, v in sorted(ratios.items()):
        print(f"  {k}: {v:.3g}")


if __name__ == "__main__":
    main()
