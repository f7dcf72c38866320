"""Throughput vs batch size, and peak memory vs dataset size through ``explain_dataset``.

1. Throughput: the jitted hybrid on the default small model (64x64) at batch sizes
   1, 2, 4, ..., 1024 (``--quick``: up to 256); images per second, median of repeats.
2. Memory: ``jaxlrp.distributed.explain_dataset`` over N streamed examples (a generator
   of batches, so the input is never all in memory) with ``chunk_size=256`` and the maps
   written to a memory-mapped ``.npy``; each N runs in a fresh subprocess that samples
   its resident memory (every 5 ms: RSS, and the anonymous part ``RssAnon`` without the
   output file's cached pages) during the run and reports the peak minus the memory
   after setup (imports, model, compiled explainer: the compiler's
   own peak comes before and is excluded). Flat in N past the chunk size
   is the property; the in-memory output variant (``out=None``) is measured too, and
   grows by N x 64 x 64 x 4 bytes as it must.

Usage::

    python benchmarks/bench_scaling.py --quick
    python benchmarks/bench_scaling.py
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

CHILD = r"""
import json, os, sys, tempfile, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np, psutil
import _common as U
from jaxlrp import explainers
from jaxlrp.distributed import explain_dataset

n, chunk, use_out, name = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
model, _ = U.small_model()
explain = explainers.get(name)

def stream(n, batch=100, seed=0):
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        yield rng.random((b, 64, 64, 3), dtype=np.float32), rng.integers(0, 8, b).astype(np.int32)

# warm-up: compile the chunked explainer once (the same shapes as the run below)
explain_dataset(explain, model, stream(chunk), chunk_size=chunk, progress=False)
proc = psutil.Process()

def anon():  # resident anonymous memory (the process's own heap, no file-backed pages)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return proc.memory_info().rss

base, base_anon = proc.memory_info().rss, anon()
peak, peak_anon = [base], [base_anon]
done = threading.Event()

def poll():  # resident memory, sampled every 5 ms during the run
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        peak_anon[0] = max(peak_anon[0], anon())
        time.sleep(0.005)

watcher = threading.Thread(target=poll, daemon=True)
watcher.start()
folder = tempfile.mkdtemp()
out = os.path.join(folder, "maps.npy") if use_out else None
maps = explain_dataset(explain, model, stream(n), chunk_size=chunk, out=out, progress=False)
done.set()
watcher.join()
peak = max(peak[0], proc.memory_info().rss)
peak_anon = max(peak_anon[0], anon())
ok = bool(np.isfinite(np.asarray(maps[-5:])).all())
print("RESULT " + json.dumps({"n": n, "base_rss": base, "peak_rss": peak,
                              "base_anon": base_anon, "peak_anon": peak_anon,
                              "shape": list(maps.shape), "finite_tail": ok}))
"""


def throughput(batches: list[int], reps: int, workload: str = "small") -> list[dict]:
    import _floor as F
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxlrp._hybrid import hybrid

    if workload == "vgg16":
        model, size = U.VGG16(rngs=nnx.Rngs(0)), 224
    else:
        (model, _), size = U.small_model(), 64
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: hybrid(nnx.merge(graphdef, s), x, "predicted"))
    rows = []
    for b in batches:
        x = jnp.asarray(np.random.default_rng(b).random((b, size, size, 3), dtype=np.float32))
        t = U.timeit(lambda x=x: fn(state, x), reps=reps if b < 512 else max(2, reps - 2))
        fl = F.time_floor(model, x, "hybrid", reps=reps if b < 512 else max(2, reps - 2))
        rows.append({"batch": b, "median_s": t["median"], "compile_s": t["compile"],
                     "first_s": t["first"], "images_per_s": b / t["median"],
                     "images_per_s_incl_compile": b / t["first"], "runs": t["runs"],
                     "floor_s": fl["median"], "floor_first_s": fl["first"],
                     "over_floor": t["median"] / fl["median"],
                     "over_floor_incl_compile": t["first"] / fl["first"]})
        print(f"  batch {b:5d}: {b / t['median']:8.1f} img/s (median {t['median']:.4f} s, "
              f"compile {t['compile']:.1f} s; {t['median'] / fl['median']:.2f}x its floor)",
              flush=True)
    return rows


def memory(sizes: list[int], chunk: int, explainer: str) -> list[dict]:
    here = str(Path(__file__).resolve().parent)
    rows = []
    for use_out in (True, False):
        for n in sizes:
            env = dict(os.environ)
            proc = subprocess.run([sys.executable, "-c", CHILD, here, str(n), str(chunk),
                                   "1" if use_out else "0", explainer],
                                  capture_output=True, text=True, env=env, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            r = json.loads(line[len("RESULT "):])
            r["out"] = "memmap .npy" if use_out else "in memory"
            r["growth_mib"] = (r["peak_rss"] - r["base_rss"]) / 2**20
            r["peak_mib"] = r["peak_rss"] / 2**20
            r["anon_growth_mib"] = (r["peak_anon"] - r["base_anon"]) / 2**20
            rows.append(r)
            print(f"  N {n:6d} ({r['out']}): peak RSS {r['peak_mib']:.0f} MiB, growth over "
                  f"setup {r['growth_mib']:.1f} MiB (anonymous {r['anon_growth_mib']:.1f} MiB)",
                  flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--explainer", default="hybrid")
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--workload", choices=("small", "vgg16"), default="small",
                    help="model of the throughput part (the memory part uses the small one)")
    ap.add_argument("--throughput-only", action="store_true",
                    help="skip the explain_dataset memory part (device runs)")
    ap.add_argument("--tiny", action="store_true", help="batches up to 8, N = 64 and 256")
    ap.add_argument("--name", default="bench_scaling")
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.tiny else 3 if args.quick else 5)
    max_batch = args.max_batch or (8 if args.tiny else 256 if args.quick else 1024)
    batches = [2**i for i in range(0, 11) if 2**i <= max_batch]
    sizes = args.sizes or ([64, 256] if args.tiny else [256, 1024, 4096] if args.quick
                           else [256, 1024, 4096, 16384])
    if args.tiny and args.chunk == 256:
        args.chunk = 32
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}", flush=True)
    t0 = time.time()
    print(f"throughput (jitted hybrid, {args.workload} model):", flush=True)
    thr = throughput(batches, reps, args.workload)
    mem = []
    if not args.throughput_only:
        print(f"memory (explain_dataset, chunk {args.chunk}, {args.explainer}):", flush=True)
        mem = memory(sizes, args.chunk, args.explainer)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_s"] = round(time.time() - t0, 1)
    mm = [r for r in mem if r["out"] == "memmap .npy"]
    ratio = mm[-1]["anon_growth_mib"] / max(mm[0]["anon_growth_mib"], 1e-9) if mm else None
    best = max(thr, key=lambda r: r["images_per_s"])
    figures = {"machine": info, "args": vars(args), "throughput": thr, "memory": mem,
               "ratios": {"memmap_anon_growth_largest_over_smallest_N": ratio,
                          "best_batch": best["batch"],
                          "best_over_batch1_throughput": best["images_per_s"]
                          / thr[0]["images_per_s"],
                          "best_batch_incl_compile_over_median_throughput":
                          best["images_per_s_incl_compile"] / best["images_per_s"],
                          "best_batch_over_floor": best["over_floor"],
                          "max_over_floor": max(r["over_floor"] for r in thr)}}
    md = ["# bench_scaling", "", U.machine_md(info), "",
          f"Command: `python benchmarks/bench_scaling.py {' '.join(sys.argv[1:])}`", "",
          f"## Throughput of the jitted hybrid ({args.workload} model)", "",
          U.table([[r["batch"], r["median_s"], r["images_per_s"], r["compile_s"],
                    r["images_per_s_incl_compile"], r["floor_s"], r["over_floor"],
                    r["over_floor_incl_compile"]] for r in thr],
                  ["batch", "median s", "images/s", "compile s",
                   "images/s incl. compile (one call)", "floor s", "hybrid / floor",
                   "hybrid / floor incl. compile"]), "",
          "floor = floor(hybrid) of `_floor.py` at the same batch (forward, backward to the "
          "CAM layer, z+ forward and its transposed pass), jitted; incl. compile = ratio of "
          "the first calls.", ""]
    if mem:
        md += [f"## Peak memory through explain_dataset (chunk {args.chunk}, {args.explainer}, "
               "streamed input)", "",
               U.table([[r["n"], r["out"], r["peak_mib"], r["growth_mib"], r["anon_growth_mib"]]
                        for r in mem],
                       ["N", "output", "peak RSS MiB", "RSS growth over setup MiB",
                        "anonymous growth MiB"]), "",
               "RSS also counts the pages of the memory-mapped output file that the kernel "
               "keeps cached (N x 16 KiB, reclaimable); the anonymous figure is the process's "
               "own memory.", "",
               f"Memory-mapped output: anonymous growth at N={mm[-1]['n']} / at N={mm[0]['n']} "
               f"= {ratio:.2f}."]
    U.write_results(args.name, figures, "\n".join(md))
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}")
    print("ratios:")
    print(f"  throughput: best batch {best['batch']} = "
          f"{figures['ratios']['best_over_batch1_throughput']:.1f}x batch 1; one call incl. "
          f"compile at that batch: {best['images_per_s_incl_compile']:.1f} img/s")
    if mm:
        print(f"  memory (memmap): anonymous growth N={mm[-1]['n']} / N={mm[0]['n']} = "
              f"{ratio:.2f} ({mm[0]['anon_growth_mib']:.1f} -> "
              f"{mm[-1]['anon_growth_mib']:.1f} MiB)")


if __name__ == "__main__":
    main()
