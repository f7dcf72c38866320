"""Max-pool lowerings: XLA's ``reduce_window_max`` against the select chain, per shape.

For every pool shape of the grid (the pools of the default small model, of VGG16 and
ResNet's 3x3/2 stem pool, at several batch sizes) this times, jitted, on the current
backend:

* ``forward``: the pool alone, with each lowering (``xla``: ``lax.reduce_window_max``;
  ``select``: ``jaxlrp._lrp.pooling.window_max``);
* ``gradient``: the vjp of the pool (forward + backward, as ``jax.grad`` runs it),
  with each lowering (``xla``'s derivative is ``select_and_scatter_add``);
* ``rule``: ``jaxlrp._lrp.pooling.max_pool``, which follows
  :func:`jaxlrp._lrp.pooling.lowering`, for both.

* ``floor``: one pass over the memory the op must touch, timed the same way: the sum of
  the input (forward: every input element is read once) and ``2 * x`` (gradient: the
  input is read and a gradient of its size written), so ``rule / floor`` says how far
  the chosen lowering is from a memory-bound pass.

It then checks, per shape and mode, whether the library's rule picks the faster
lowering (``rule_check``), and fits the simplest rule of the same form ("the select
chain when a feature of the shape is >= a threshold") for each candidate feature
(``fits``): the threshold and feature that lose the least time over the grid. The
library's rule (``jaxlrp/_lrp/pooling.py:lowering``) cites ``results/bench_pooling.json``;
rerun this after changing the machine and update the rule if the fit disagrees.

Usage::

    python benchmarks/bench_pooling.py --quick --name scratch_pooling   # small grid
    python benchmarks/bench_pooling.py                                   # full grid
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlrp._lrp import pooling  # noqa: E402

VGG = ((2, 2), (2, 2), ((0, 0), (0, 0)))
STEM = ((3, 3), (2, 2), ((1, 1), (1, 1)))
SMALL_POOLS = [(64, 64, 16), (32, 32, 32), (16, 16, 64), (8, 8, 128)]
VGG_POOLS = [(224, 224, 64), (112, 112, 128), (56, 56, 256), (28, 28, 512), (14, 14, 512)]


def grid(quick: bool) -> list[tuple[tuple[int, ...], tuple]]:
    """(input shape (B, H, W, C), (window, strides, padding) in H, W) pairs."""
    if quick:
        out = [((b,) + s, VGG) for b in (8, 64) for s in SMALL_POOLS[:2]]
        out += [((1,) + s, VGG) for s in VGG_POOLS[1:4]]
        out += [((1, 56, 56, 64), STEM)]
        return out
    out = [((b,) + s, VGG) for b in (1, 32, 256) for s in SMALL_POOLS]
    out += [((b,) + s, VGG) for b in (1, 8, 32) for s in VGG_POOLS]
    out += [((b, 112, 112, 64), STEM) for b in (1, 8, 32)]
    return out


def full_params(spec: tuple) -> tuple:
    (wh, ww), (sh, sw), (ph, pw) = spec
    return (1, wh, ww, 1), (1, sh, sw, 1), ((0, 0), ph, pw, (0, 0))


def fns(dims, strides, pads):
    def fwd(kind):
        if kind == "rule":
            return jax.jit(lambda x: pooling.max_pool(x, dims, strides, pads))
        impl = pooling.xla_max if kind == "xla" else pooling.window_max
        return jax.jit(lambda x: impl(x, dims, strides, pads))

    def grad(kind):
        f = fwd(kind)

        def vjp(x, g):
            out, back = jax.vjp(f, x)
            return back(g)[0]

        return jax.jit(vjp)

    return fwd, grad


def measure(shapes, reps: int) -> list[dict]:
    rows = []
    backend = jax.default_backend()
    for shape, spec in shapes:
        dims, strides, pads = full_params(spec)
        rng = np.random.default_rng(0)
        x = jnp.asarray(np.maximum(rng.normal(size=shape), 0), jnp.float32)  # post-ReLU
        fwd, grad = fns(dims, strides, pads)
        g = jnp.asarray(rng.normal(size=jax.eval_shape(fwd("xla"), x).shape), jnp.float32)
        row = {"shape": list(shape), "window": list(spec[0]), "strides": list(spec[1]),
               "padding": [list(p) for p in spec[2]],
               "rule": list(pooling.lowering(backend, shape, dims, strides, pads))}
        floors = {"forward": (jax.jit(jnp.sum), (x,)),
                  "gradient": (jax.jit(lambda v: 2 * v), (x,))}
        for mode in ("forward", "gradient"):
            f, args = floors[mode]
            t = U.timeit(lambda f=f, args=args: f(*args), reps=reps)
            row[f"{mode}_floor"], row[f"{mode}_floor_compile"] = t["median"], t["compile"]
            for kind in ("xla", "select", "rule"):
                f = fwd(kind) if mode == "forward" else grad(kind)
                args = (x,) if mode == "forward" else (x, g)
                t = U.timeit(lambda f=f, args=args: f(*args), reps=reps)
                row[f"{mode}_{kind}"] = t["median"]
                row[f"{mode}_{kind}_compile"] = t["compile"]
            # identical values / derivatives
            a = fwd("xla")(x) if mode == "forward" else grad("xla")(x, g)
            b = fwd("rule")(x) if mode == "forward" else grad("rule")(x, g)
            row[f"{mode}_rule_equal"] = bool(np.array_equal(np.asarray(a), np.asarray(b)))
            faster = "select" if row[f"{mode}_select"] < row[f"{mode}_xla"] else "xla"
            row[f"{mode}_faster"] = faster
            idx = 0 if mode == "forward" else 1
            row[f"{mode}_rule_agrees"] = row["rule"][idx] == faster
        print(f"  {str(tuple(shape)):22s} {spec[0]}/{spec[1]}: forward xla "
              f"{row['forward_xla'] * 1e3:8.2f} ms select {row['forward_select'] * 1e3:8.2f} ms"
              f" rule {row['forward_rule'] * 1e3:8.2f} ms | gradient xla "
              f"{row['gradient_xla'] * 1e3:8.2f} ms select {row['gradient_select'] * 1e3:8.2f}"
              f" ms rule {row['gradient_rule'] * 1e3:8.2f} ms | rule {row['rule']}", flush=True)
        rows.append(row)
    return rows


FEATURES = {
    "per_example_elements": lambda s: int(np.prod(s[1:])),
    "total_elements": lambda s: int(np.prod(s)),
    "channels": lambda s: int(s[-1]),
    "spatial": lambda s: int(np.prod(s[1:-1])),
}


def fit(rows: list[dict], mode: str) -> list[dict]:
    """For each feature, the threshold T minimising the summed time of the rule
    "select if feature >= T else xla" over the grid (T = inf: always xla)."""
    out = []
    best_possible = sum(min(r[f"{mode}_xla"], r[f"{mode}_select"]) for r in rows)
    for name, feat in FEATURES.items():
        values = sorted({feat(r["shape"]) for r in rows}) + [float("inf")]
        best = None
        for thr in values:
            total = sum(r[f"{mode}_select"] if feat(r["shape"]) >= thr else r[f"{mode}_xla"]
                        for r in rows)
            if best is None or total < best[1]:
                best = (thr, total)
        out.append({"feature": name, "threshold": best[0], "total_s": best[1],
                    "oracle_total_s": best_possible})
    return sorted(out, key=lambda d: d["total_s"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small grid (CPU: ~1 minute)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--name", default="bench_pooling")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, {info['platform']}, load {info['loadavg']}",
          flush=True)
    t0 = time.time()
    rows = measure(grid(args.quick), reps)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_s"] = round(time.time() - t0, 1)
    fits = {m: fit(rows, m) for m in ("forward", "gradient")}
    agree = {m: sum(r[f"{m}_rule_agrees"] for r in rows) for m in ("forward", "gradient")}
    totals = {m: {k: sum(r[f"{m}_{k}"] for r in rows)
                  for k in ("xla", "select", "rule", "floor")}
              for m in ("forward", "gradient")}
    for m in ("forward", "gradient"):  # compile-inclusive: one first call of each
        for k in ("rule", "floor"):
            totals[m][f"{k}_incl_compile"] = sum(r[f"{m}_{k}"] + r[f"{m}_{k}_compile"]
                                                 for r in rows)
    figures = {"machine": info, "args": vars(args), "rows": rows, "fits": fits,
               "rule_check": {"agrees": agree, "shapes": len(rows), "totals_s": totals,
                              "all_equal": all(r["forward_rule_equal"] and
                                               r["gradient_rule_equal"] for r in rows)}}
    md = ["# bench_pooling", "", U.machine_md(info), "",
          f"Command: `python benchmarks/bench_pooling.py {' '.join(sys.argv[1:])}`", "",
          U.table([[str(tuple(r["shape"])), f"{r['window']}/{r['strides']}",
                    r["forward_xla"] * 1e3, r["forward_select"] * 1e3, r["forward_rule"] * 1e3,
                    r["gradient_xla"] * 1e3, r["gradient_select"] * 1e3,
                    r["gradient_rule"] * 1e3, "/".join(r["rule"]),
                    r["forward_rule"] / r["forward_floor"],
                    r["gradient_rule"] / r["gradient_floor"]] for r in rows],
                   ["shape", "window/stride", "fwd xla ms", "fwd select ms", "fwd rule ms",
                    "grad xla ms", "grad select ms", "grad rule ms", "rule (fwd/grad)",
                    "fwd rule / floor", "grad rule / floor"]), ""]
    for m in ("forward", "gradient"):
        incl = totals[m]["rule_incl_compile"] / totals[m]["floor_incl_compile"]
        md += [f"- {m}: the library's rule picks the faster lowering for {agree[m]} of "
               f"{len(rows)} shapes; summed time xla {totals[m]['xla']:.4g} s, select "
               f"{totals[m]['select']:.4g} s, rule {totals[m]['rule']:.4g} s; best fit: "
               f"select when {fits[m][0]['feature']} >= {fits[m][0]['threshold']} "
               f"({fits[m][0]['total_s']:.4g} s, oracle {fits[m][0]['oracle_total_s']:.4g} s); "
               f"summed rule / floor **{totals[m]['rule'] / totals[m]['floor']:.3g}x**, with "
               f"compile time {incl:.3g}x"]
    md += ["", "Floor: one memory-bound pass over what the op must touch, jitted and timed "
           "alike: the sum of the input (forward) and `2 * x` (gradient: read the input, "
           "write a gradient of its size)."]
    md += ["", f"Values and derivatives of the rule equal XLA's on every shape: "
           f"{figures['rule_check']['all_equal']}."]
    U.write_results(args.name, figures, "\n".join(md))
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}")
    print("ratios:")
    for m in ("forward", "gradient"):
        f0 = fits[m][0]
        print(f"  {m}: rule agrees on {agree[m]}/{len(rows)} shapes; xla/rule "
              f"{totals[m]['xla'] / totals[m]['rule']:.2f}x, select/rule "
              f"{totals[m]['select'] / totals[m]['rule']:.2f}x; best fit: select when "
              f"{f0['feature']} >= {f0['threshold']}; rule / floor "
              f"{totals[m]['rule'] / totals[m]['floor']:.2f}x (with compile "
              f"{totals[m]['rule_incl_compile'] / totals[m]['floor_incl_compile']:.2f}x)")
    print(f"  values and derivatives identical: {figures['rule_check']['all_equal']}")


if __name__ == "__main__":
    main()
