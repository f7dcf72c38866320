"""bfloat16 vs float32, and XLA:CPU's oneDNN custom call, for the jitted hybrid.

1. dtype: the jitted hybrid (``jaxlrp.hybrid``) on the default small model
   (``U.small_model()``: ``default_model()``) and embedded test images (batch 128), once
   in float32 and once with parameters and inputs cast to bfloat16 (targets: the float32
   model's predictions, for both). The calls alternate in one process (f32, bf16, bf16,
   f32, ...) so both see the same load; each side's median and IQR, the bf16 / f32 ratio
   of every interleaved pair (median, IQR), and the max |map difference|.
2. oneDNN: ``XLA_FLAGS`` is read when jax starts, so each setting runs in its own
   subprocess: the jitted hybrid (same batch) and VGG16 forward and input gradient
   (``_common.VGG16``, random weights, ``--vgg-batch``), without the flag and with
   ``--xla_cpu_experimental_onednn_custom_call=true``, in ``--rounds`` rounds of
   alternating order (off/on, on/off, ...). Per workload: both sides' medians and IQRs,
   the on / off ratio of medians, the ratio of every rep pair (median, IQR), whether the
   compiled program mentions oneDNN, and whether it is the same with and without the
   flag (then the flag changed nothing that runs). "no measurable difference" when the
   IQR of the paired ratios contains 1.

Writes ``results/bench_dtype_flags.json`` and ``.md`` (``JAXLRP_BENCH_RESULTS`` redirects).

Usage::

    python benchmarks/bench_dtype_flags.py --tiny     # smoke test: batch 4, no VGG16
    python benchmarks/bench_dtype_flags.py            # batch 128, 7 reps, VGG16 batch 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402

ONEDNN = "--xla_cpu_experimental_onednn_custom_call=true"

# ----------------------------------------------------------------------------- statistics


def stats(runs: list[float]) -> dict:
    """Median, quartiles and IQR of a list of seconds (or ratios)."""
    a = np.asarray(runs, float)
    q25, med, q75 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    return {"median": med, "q25": q25, "q75": q75, "iqr": q75 - q25, "n": len(a)}


def ratio_stats(num: list[float], den: list[float]) -> dict:
    """``num / den``: the ratio of the medians and the stats of the pairwise ratios (the
    i-th run of one side against the i-th of the other: taken side by side in time)."""
    pairs = [a / b for a, b in zip(num, den, strict=True)]
    return {"ratio_of_medians": float(np.median(num) / np.median(den)),
            "paired": stats(pairs), "pairs": pairs}


def verdict(r: dict) -> str:
    """'no measurable difference' when the paired ratios' IQR contains 1, else which way."""
    p = r["paired"]
    if p["q25"] <= 1.0 <= p["q75"]:
        return "no measurable difference"
    return "slower" if p["q25"] > 1.0 else "faster"


# ----------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict]:
    """Time several functions in alternating order (ABBA...): per name ``first`` (compile
    + run) and ``runs`` (seconds)."""
    out: dict[str, dict] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        U.block(fn())
        out[name] = {"first": time.perf_counter() - t0, "runs": []}
    names = list(fns)
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            U.block(fns[name]())
            out[name]["runs"].append(time.perf_counter() - t0)
    return out


def _small_batch(batch: int) -> tuple[Any, str, Any, Any]:
    import jax.numpy as jnp

    from jaxlrp.data import embedded

    model, desc = U.small_model()
    x = jnp.asarray(embedded("test", n=batch, seed=0).images)
    t = jnp.argmax(model(x), -1)
    return model, desc, x, t


def _hybrid_fn() -> Callable:
    import jax
    from flax import nnx

    from jaxlrp import hybrid

    return lambda graphdef: jax.jit(lambda s, x, t: hybrid(nnx.merge(graphdef, s), x, t))


def dtype_part(batch: int, reps: int) -> dict:
    """float32 vs bfloat16 (parameters and inputs) for the jitted hybrid, interleaved."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model, desc, x, t = _small_batch(batch)
    graphdef, state = nnx.split(model)

    def bf16(a: Any) -> Any:
        return a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a

    state16, x16 = jax.tree.map(bf16, state), x.astype(jnp.bfloat16)
    fn = _hybrid_fn()(graphdef)
    timing = interleaved({"float32": lambda: fn(state, x, t),
                          "bfloat16": lambda: fn(state16, x16, t)}, reps)
    m32 = np.asarray(fn(state, x, t), np.float32)
    m16 = np.asarray(fn(state16, x16, t).astype(jnp.float32))
    pred16 = np.asarray(jnp.argmax(nnx.merge(graphdef, state16)(x16), -1))
    diff = np.abs(m32 - m16)
    import _floor as F  # the least work of the hybrid, at each dtype (benchmarks/_floor.py)

    floors = {"float32": F.time_floor(model, x, "hybrid", reps),
              "bfloat16": F.time_floor(nnx.merge(graphdef, state16), x16, "hybrid", reps)}
    return {"model": desc, "batch": batch, "reps": reps, "timing": timing, "floors": floors,
            "max_abs_map_diff": float(diff.max()), "mean_abs_map_diff": float(diff.mean()),
            "map_dtype_bfloat16": str(fn(state16, x16, t).dtype),
            "bf16_prediction_agreement": float(np.mean(pred16 == np.asarray(t)))}


# ----------------------------------------------------------------------------- the flag


def child(batch: int, vgg_batch: int, reps: int) -> dict:
    """In a subprocess (``XLA_FLAGS`` fixed at start): time the workloads, count oneDNN
    custom calls in their compiled programs."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    jobs: dict[str, tuple[Callable, tuple]] = {}
    model, _, x, t = _small_batch(batch)
    graphdef, state = nnx.split(model)
    jobs[f"hybrid, small model, batch {batch}"] = (_hybrid_fn()(graphdef), (state, x, t))
    if vgg_batch > 0:
        vgg = U.VGG16(rngs=nnx.Rngs(0))
        vg, vs = nnx.split(vgg)
        xv = jnp.asarray(np.random.default_rng(0).random((vgg_batch, 224, 224, 3),
                                                         dtype=np.float32))
        tv = jnp.zeros((vgg_batch,), jnp.int32)

        def logit_sum(s: Any, xx: Any, tt: Any) -> Any:
            out = nnx.merge(vg, s)(xx)
            return jnp.take_along_axis(out, tt[:, None], 1).sum()

        jobs[f"VGG16 forward, batch {vgg_batch}"] = (
            jax.jit(lambda s, xx: nnx.merge(vg, s)(xx)), (vs, xv))
        jobs[f"VGG16 input gradient, batch {vgg_batch}"] = (
            jax.jit(jax.grad(logit_sum, argnums=1)), (vs, xv, tv))
    out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "workloads": {}}
    for name, (fn, args) in jobs.items():
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        hlo = compiled.as_text()
        timing = U.timeit(lambda c=compiled, a=args: c(*a), reps=reps)
        out["workloads"][name] = {"compile_s": compile_s, "first": timing["first"],
                                  "runs": timing["runs"],
                                  "onednn_calls": hlo.lower().count("onednn"),
                                  "hlo_sha256": hashlib.sha256(hlo.encode()).hexdigest()}
        print(f"  {name}: median {timing['median']:.4f} s", file=sys.stderr, flush=True)
    return out


def flags_part(batch: int, vgg_batch: int, reps: int, rounds: int) -> dict:
    """Run :func:`child` without and with the oneDNN flag, in alternating order."""
    base = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                    if not f.startswith("--xla_cpu_experimental_onednn_custom_call"))
    out: dict[str, Any] = {"flag": ONEDNN, "base_xla_flags": base, "rounds": []}
    for r in range(rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        res: dict[str, Any] = {"order": list(order)}
        for side in order:
            env = dict(os.environ, XLA_FLAGS=(f"{base} {ONEDNN}" if side == "on" else base)
                       .strip())
            print(f"round {r + 1}/{rounds}, oneDNN {side}:", flush=True)
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", "--batch",
                 str(batch), "--vgg-batch", str(vgg_batch), "--reps", str(reps)],
                capture_output=True, text=True, env=env, timeout=3600)
            sys.stdout.write(proc.stderr[-2000:] if proc.returncode else "")
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                res[side] = {"error": proc.stderr[-3000:], "returncode": proc.returncode}
            else:
                res[side] = json.loads(lines[-1][len("RESULT "):])
        out["rounds"].append(res)
    return out


# ----------------------------------------------------------------------------- results


def summarise_flags(flags: dict) -> dict:
    """Per workload: both sides' stats over all rounds, on / off ratios, oneDNN calls."""
    ok = [r for r in flags["rounds"] if "workloads" in r["off"] and "workloads" in r["on"]]
    out: dict[str, Any] = {}
    if not ok:
        return out
    for name in ok[0]["off"]["workloads"]:
        off = [v for r in ok for v in r["off"]["workloads"][name]["runs"]]
        on = [v for r in ok for v in r["on"]["workloads"][name]["runs"]]
        rs = ratio_stats(on, off)
        same = all(r["on"]["workloads"][name].get("hlo_sha256")
                   == r["off"]["workloads"][name].get("hlo_sha256") for r in ok)
        out[name] = {"off": stats(off), "on": stats(on), "on_over_off": rs,
                     "verdict": "none: the same compiled program" if same else verdict(rs),
                     "same_program": same,
                     "round_ratios": [float(np.median(r["on"]["workloads"][name]["runs"])
                                            / np.median(r["off"]["workloads"][name]["runs"]))
                                      for r in ok],
                     "onednn_calls_on": max(r["on"]["workloads"][name]["onednn_calls"]
                                            for r in ok),
                     "onednn_calls_off": max(r["off"]["workloads"][name]["onednn_calls"]
                                             for r in ok),
                     "compile_s_off": float(np.median(
                         [r["off"]["workloads"][name]["compile_s"] for r in ok])),
                     "compile_s_on": float(np.median(
                         [r["on"]["workloads"][name]["compile_s"] for r in ok]))}
    return out


def build_results(dtype: dict | None, flags: dict | None, info: dict,
                  command: str) -> tuple[dict, str]:
    """(the JSON object, the Markdown) from the raw timings of the two parts."""
    figures: dict[str, Any] = {"machine": info, "command": command}
    md = ["# bench_dtype_flags", "", U.machine_md(info), "", f"Command: `{command}`", ""]
    if dtype is not None:
        f32, b16 = dtype["timing"]["float32"]["runs"], dtype["timing"]["bfloat16"]["runs"]
        rs = ratio_stats(b16, f32)
        figures["dtype"] = {**dtype, "float32": stats(f32), "bfloat16": stats(b16),
                            "bf16_over_f32": rs, "verdict": verdict(rs)}
        md += [f"## dtype: jitted hybrid, {dtype['model']}, batch {dtype['batch']}", "",
               f"Parameters and inputs cast to bfloat16; the calls alternate in one process "
               f"({dtype['reps']} reps per side).", "",
               U.table([[k, s["median"], s["q25"], s["q75"],
                         dtype["timing"][k]["first"]]
                        for k, s in (("float32", figures["dtype"]["float32"]),
                                     ("bfloat16", figures["dtype"]["bfloat16"]))],
                       ["dtype", "median s", "q25 s", "q75 s", "first call s (compile)"]),
               "",
               f"bfloat16 / float32: {rs['ratio_of_medians']:.3g}x (ratio of medians); "
               f"paired ratios median {rs['paired']['median']:.3g}x, IQR "
               f"[{rs['paired']['q25']:.3g}, {rs['paired']['q75']:.3g}]: "
               f"**{verdict(rs)}**.", "",
               f"Max |map difference| (bfloat16 map in float32 vs the float32 map): "
               f"**{dtype['max_abs_map_diff']:.3g}** (mean {dtype['mean_abs_map_diff']:.3g}); "
               f"bfloat16 predictions agree with float32 on "
               f"{100 * dtype['bf16_prediction_agreement']:.1f}% of the images.", ""]
        if "floors" in dtype:  # floor(hybrid) (benchmarks/_floor.py) at the same dtype
            rows = []
            for k in ("float32", "bfloat16"):
                fl, run = dtype["floors"][k], dtype["timing"][k]
                ratio = figures["dtype"][k]["median"] / fl["median"]
                cold = run["first"] / fl["first"]
                figures["dtype"][k].update(floor=fl["median"], floor_first=fl["first"],
                                           over_floor=ratio, over_floor_incl_compile=cold)
                rows.append([k, fl["median"], fl["first"], ratio, cold])
            md += ["The floor of the hybrid (forward, backward to the CAM layer, z+ forward "
                   "and its transposed pass; `benchmarks/_floor.py`) at each dtype:", "",
                   U.table(rows, ["dtype", "floor median s", "floor first call s",
                                  "hybrid / floor", "hybrid / floor, first calls (compile)"]),
                   ""]
    if flags is not None:
        summary = summarise_flags(flags)
        figures["onednn"] = {**flags, "summary": summary}
        md += ["## XLA:CPU oneDNN custom call", "",
               f"`XLA_FLAGS={flags['flag']}` (on) vs without it (off), each in its own "
               f"process, {len(flags['rounds'])} round(s) in alternating order.", ""]
        errors = [f"round {i + 1}, {side}: {r[side]['error'].strip()[-500:]}"
                  for i, r in enumerate(flags["rounds"]) for side in ("off", "on")
                  if "error" in r[side]]
        if errors:
            md += ["**Failed runs** (left out):", "", "```", *errors, "```", ""]
        if summary:
            md += [U.table([[name, s["off"]["median"], s["off"]["iqr"], s["on"]["median"],
                             s["on"]["iqr"], s["on_over_off"]["ratio_of_medians"],
                             s["on_over_off"]["paired"]["median"],
                             f"[{s['on_over_off']['paired']['q25']:.3g}, "
                             f"{s['on_over_off']['paired']['q75']:.3g}]",
                             s["onednn_calls_on"], "yes" if s["same_program"] else "no",
                             s["verdict"]]
                            for name, s in summary.items()],
                           ["workload", "off median s", "off IQR s", "on median s",
                            "on IQR s", "on/off (medians)", "on/off paired median",
                            "paired IQR", "oneDNN calls (on)", "same program", "verdict"]),
                   "",
                   "A paired ratio compares the i-th timed call of the two processes of a "
                   "round; 'no measurable difference' means the IQR of those ratios "
                   "contains 1. oneDNN calls: mentions of oneDNN (its custom calls are "
                   "named `__onednn$...`) in the compiled program with the flag on; same "
                   "program: the compiled HLO text is identical with and without the flag "
                   "(then the flag changed nothing that runs, and any difference in time "
                   "is noise).", ""]
    return figures, "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=None, help="small-model batch (128)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per side (7)")
    ap.add_argument("--vgg-batch", type=int, default=None,
                    help="VGG16 batch in the flag part (4; 0 leaves VGG16 out)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="off/on process pairs in the flag part (2)")
    ap.add_argument("--parts", nargs="+", choices=("dtype", "flags"),
                    default=["dtype", "flags"])
    ap.add_argument("--tiny", action="store_true",
                    help="smoke test: batch 4, 2 reps, 1 round, no VGG16")
    ap.add_argument("--name", default="bench_dtype_flags")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batch = args.batch or (4 if args.tiny else 128)
    reps = args.reps or (2 if args.tiny else 7)
    vgg_batch = args.vgg_batch if args.vgg_batch is not None else (0 if args.tiny else 4)
    rounds = args.rounds or (1 if args.tiny else 2)
    if args.child:
        print("RESULT " + json.dumps(child(batch, vgg_batch, reps)), flush=True)
        return
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}", flush=True)
    t0 = time.time()
    dtype = flags = None
    if "dtype" in args.parts:
        print(f"dtype (jitted hybrid, small model, batch {batch}, {reps} reps):", flush=True)
        dtype = dtype_part(batch, reps)
    if "flags" in args.parts:
        flags = flags_part(batch, vgg_batch, reps, rounds)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_s"] = round(time.time() - t0, 1)
    command = ("python benchmarks/bench_dtype_flags.py "
               + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    figures, md = build_results(dtype, flags, info, command)
    out = U.write_results(args.name, figures, md)
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}; wrote {out}")
    if dtype is not None:
        d = figures["dtype"]
        print(f"bfloat16 / float32: {d['bf16_over_f32']['ratio_of_medians']:.3g}x "
              f"({d['verdict']}); max |map diff| {d['max_abs_map_diff']:.3g}")
    for name, s in figures.get("onednn", {}).get("summary", {}).items():
        print(f"oneDNN on/off, {name}: {s['on_over_off']['ratio_of_medians']:.3g}x, paired "
              f"IQR [{s['on_over_off']['paired']['q25']:.3g}, "
              f"{s['on_over_off']['paired']['q75']:.3g}] ({s['verdict']}; "
              f"{s['onednn_calls_on']} oneDNN calls)")


if __name__ == "__main__":
    main()
