"""LRP and the hybrid against their floors, interleaved in one fresh process, with the
operating system's share of the time.

``bench_hybrid.py`` times each function after the other in one long process that also
holds the peers' torch model and earlier batches. At VGG16 batch 32 its ratios moved
from run to run (hybrid / floor 1.49x then 1.13x; LRP 1.16x then 1.33x) with the code
unchanged. This script compiles the four programs (``lrp``, ``floor(lrp)``, ``hybrid``,
``floor(hybrid)``; floors from ``_floor.py`` with the library's pooling rule) in a
process of its own, then runs them in turn, ``--reps`` rounds, and records per call the
wall time, the user and system CPU time and the minor page faults (``getrusage``), and
each program's XLA temporary memory. The ratios are medians of the per-round ratios.

Usage::

    python benchmarks/bench_floor.py --model vgg16 --batch 32 --reps 3
    python benchmarks/bench_floor.py --model small --batch 256 --reps 5
    python benchmarks/bench_floor.py --tiny --name scratch_floor     # smoke test

Writes ``results/bench_floor_<model>_b<batch>.json`` and ``.md`` (``--name`` to change).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402
import _floor as F  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlrp._hybrid import hybrid  # noqa: E402
from jaxlrp._lrp.engine import lrp  # noqa: E402
from jaxlrp._tracing import as_adapter  # noqa: E402
from jaxlrp.cam import resolve_layer  # noqa: E402

PAIRS = (("lrp", "floor_lrp"), ("hybrid", "floor_hybrid"))


def build(model_name: str, batch: int) -> tuple:
    """(model, x (B, H, W, 3), description)."""
    if model_name == "vgg16":
        _, model = U.vgg16_pair(0)
        x = np.random.default_rng(0).random((batch, 224, 224, 3), dtype=np.float32)
        return model, x, "torchvision vgg16(weights=None)'s NNX port, 224x224"
    from jaxlrp.data import embedded

    model, desc = U.small_model()
    return model, embedded("test", n=batch, seed=0).images, desc


def programs(model, x) -> dict:
    """The four functions ``f(state, x, t)``, jitted."""
    graphdef, _ = nnx.split(model)

    def m(s):
        return nnx.merge(graphdef, s)

    layer = resolve_layer(as_adapter(model), jnp.asarray(x), None)[0]
    return {"lrp": jax.jit(lambda s, xx, tt: lrp(m(s), xx, tt)),
            "floor_lrp": jax.jit(F.floor_fn("lrp", m, None)),
            "hybrid": jax.jit(lambda s, xx, tt: hybrid(m(s), xx, tt)),
            "floor_hybrid": jax.jit(F.floor_fn("hybrid", m, layer))}


def one_call(compiled, args) -> dict:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    jax.block_until_ready(compiled(*args))
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "user": r1.ru_utime - r0.ru_utime,
            "sys": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("vgg16", "small"), default="vgg16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="rounds of the four calls")
    ap.add_argument("--tiny", action="store_true", help="small model, batch 8, 2 rounds")
    ap.add_argument("--name", default=None, help="results file name")
    args = ap.parse_args(argv)
    if args.tiny:
        args.model, args.batch, args.reps = "small", 8, 2
    name = args.name or f"bench_floor_{args.model}_b{args.batch}"
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}", flush=True)
    model, x, desc = build(args.model, args.batch)
    _, state = nnx.split(model)
    xj = jnp.asarray(x)
    t = jnp.argmax(as_adapter(model).forward(xj), -1)
    compiled, compile_s, temp = {}, {}, {}
    for k, fn in programs(model, x).items():
        t0 = time.perf_counter()
        compiled[k] = fn.lower(state, xj, t).compile()
        compile_s[k] = time.perf_counter() - t0
        ma = compiled[k].memory_analysis()
        temp[k] = ma.temp_size_in_bytes / 2**20 if ma is not None else float("nan")
        first = one_call(compiled[k], (state, xj, t))  # the first run, untimed in ratios
        print(f"  {k:13s} compile {compile_s[k]:.2f} s, first run {first['wall']:.2f} s, "
              f"temp {temp[k]:.0f} MiB", flush=True)
    calls: dict[str, list[dict]] = {k: [] for k in compiled}
    for r in range(args.reps):
        for k, c in compiled.items():
            calls[k].append(one_call(c, (state, xj, t)))
            print(f"  round {r + 1} {k:13s} wall {calls[k][-1]['wall']:.3f} s, sys "
                  f"{calls[k][-1]['sys']:.2f} s, minor faults {calls[k][-1]['minflt']}",
                  flush=True)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    med = {k: {f: statistics.median(c[f] for c in v) for f in ("wall", "user", "sys", "minflt")}
           for k, v in calls.items()}
    ratios = {}
    for a, b in PAIRS:
        per_round = [ca["wall"] / cb["wall"] for ca, cb in zip(calls[a], calls[b], strict=True)]
        ratios[a] = {"median": statistics.median(per_round), "rounds": per_round,
                     "incl_compile": (med[a]["wall"] + compile_s[a])
                     / (med[b]["wall"] + compile_s[b])}
    figures = {"machine": info, "args": vars(args), "model": desc, "calls": calls,
               "median": med, "compile_s": compile_s, "temp_mib": temp, "ratios": ratios}
    rows = [[k, med[k]["wall"], med[k]["user"], med[k]["sys"],
             med[k]["sys"] / (med[k]["user"] + med[k]["sys"]), int(med[k]["minflt"]),
             temp[k], compile_s[k]] for k in compiled]
    md = "\n\n".join([
        f"# bench_floor: {desc}, batch {args.batch}",
        U.machine_md(info),
        f"Command: `python benchmarks/bench_floor.py {' '.join(sys.argv[1:])}`",
        f"The four programs compiled in this process, then run in turn, {args.reps} rounds "
        "(medians; CPU times and minor page faults from getrusage per call).",
        U.table(rows, ["program", "wall s", "user CPU s", "system CPU s", "system share",
                       "minor page faults", "XLA temp MiB", "compile s"]),
        "\n".join(f"- {a} / its floor: **{ratios[a]['median']:.3g}x** (median of the rounds' "
                  f"ratios {', '.join(f'{v:.3g}' for v in ratios[a]['rounds'])}; target <= "
                  f"1.25); with compile time {ratios[a]['incl_compile']:.3g}x"
                  for a, _ in PAIRS),
    ])
    print(f"results: {U.write_results(name, figures, md)}")
    for a, _ in PAIRS:
        print(f"{a} / floor: {ratios[a]['median']:.3f}x (rounds {ratios[a]['rounds']}), "
              f"incl. compile {ratios[a]['incl_compile']:.3f}x")


if __name__ == "__main__":
    main()
