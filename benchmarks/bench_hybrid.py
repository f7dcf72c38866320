"""Speed of jaxlrp's hybrid and its parts against the peers' PyTorch pipeline.

Workloads (same weights on both sides, same images, same targets):

* ``small``: the default embedded model (64x64, batch 256) and its PyTorch twin
  (``jaxlrp.twins.to_torch``);
* ``vgg16``: torchvision ``vgg16(weights=None)`` (random weights) at 224x224 and its
  port to a Flax NNX VGG16 (``benchmarks/_common.py``), batch 8 (and 32 without
  ``--quick``).

Per side: forward, input gradient, Grad-CAM++, LRP (paper composite: Alpha1-Beta0 on
convs, Epsilon(0) on dense), the full hybrid. The peers' pipeline is pytorch-grad-cam
GradCAMPlusPlus + Captum LRP + per-image cv2.GaussianBlur((5, 5), 4). JAX figures are
``jax.jit``-compiled functions (compile time reported separately), plus the public
eager ``jaxlrp.hybrid`` call. Medians of repeated runs after a warm-up.

Usage::

    python benchmarks/bench_hybrid.py --quick          # small + VGG16 batch 8, few reps
    python benchmarks/bench_hybrid.py                  # small + VGG16 batch 8 and 32
    python benchmarks/bench_hybrid.py --workload small

Ratios printed last: ``hybrid / input gradient`` (JAX, target <= 1.6) and
``peers' pipeline / jaxlrp hybrid`` (speed-up; targets >= 10 small, >= 1.7 VGG16).
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
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlrp.cam import gradcam_pp  # noqa: E402
from jaxlrp.hybrid import hybrid  # noqa: E402
from jaxlrp.lrp.engine import forward_env, lrp  # noqa: E402
from jaxlrp.lrp.graph import trace  # noqa: E402
from jaxlrp.tracing import as_adapter  # noqa: E402


def jax_side(model, x, t, reps: int) -> dict:
    """Time the JAX functions on (x, t); the model's state is a jit argument."""
    graphdef, state = nnx.split(model)

    def m(s):
        return nnx.merge(graphdef, s)

    def logit_sum(xx, s, tt):
        out = m(s)(xx)
        return jnp.take_along_axis(out, tt[:, None], axis=1).sum()

    def engine_logit_sum(xx, s, tt):
        # the same gradient, through the equations jaxlrp's engine runs (its max-pool
        # derivative avoids XLA:CPU's slow select_and_scatter_add)
        adapter = as_adapter(m(s))
        graph, leaves = trace(adapter.apply, adapter.params, xx)
        out = forward_env(graph, leaves, xx)[graph.out_id]
        return jnp.take_along_axis(out, tt[:, None], axis=1).sum()

    fns = {
        "forward": jax.jit(lambda s, xx: m(s)(xx)),
        "input_gradient": jax.jit(lambda s, xx, tt: jax.grad(logit_sum)(xx, s, tt)),
        "input_gradient_engine": jax.jit(
            lambda s, xx, tt: jax.grad(engine_logit_sum)(xx, s, tt)),
        "gradcam_pp": jax.jit(lambda s, xx, tt: gradcam_pp(m(s), xx, tt)),
        "lrp": jax.jit(lambda s, xx, tt: lrp(m(s), xx, tt)),
        "hybrid": jax.jit(lambda s, xx, tt: hybrid(m(s), xx, tt)),
    }
    xj, tj = jnp.asarray(x), jnp.asarray(t)
    res = {}
    for name, fn in fns.items():
        args = (state, xj) if name == "forward" else (state, xj, tj)
        res[name] = U.timeit(lambda fn=fn, args=args: fn(*args), reps=reps)
        print(f"  jax   {name:21s} median {res[name]['median']:.4f} s "
              f"(first call {res[name]['first']:.2f} s)", flush=True)
    res["hybrid_eager"] = U.timeit(lambda: hybrid(model, xj, tj), reps=reps)
    print(f"  jax   {'hybrid (eager)':15s} median {res['hybrid_eager']['median']:.4f} s",
          flush=True)
    res["_maps"] = np.asarray(fns["hybrid"](state, xj, tj))
    return res


def torch_side(tmodel, xt, t, cam_layer, reps: int) -> dict:
    fns = {
        "forward": lambda: U.torch_forward(tmodel, xt),
        "input_gradient": lambda: U.torch_input_gradient(tmodel, xt, t),
        "gradcam_pp": lambda: U.peer_gradcam_pp(tmodel, xt, t, cam_layer),
        "lrp": lambda: U.peer_lrp(tmodel, xt, t),
        "hybrid": lambda: U.peer_hybrid(tmodel, xt, t, cam_layer),
    }
    res = {}
    for name, fn in fns.items():
        res[name] = U.timeit(fn, reps=reps)
        print(f"  torch {name:15s} median {res[name]['median']:.4f} s", flush=True)
    res["_maps"] = U.peer_hybrid(tmodel, xt, t, cam_layer)
    return res


def workload_small(batch: int, reps: int) -> dict:
    from jaxlrp.data import embedded
    from jaxlrp.twins import to_torch, to_torch_input

    model, desc = U.small_model()
    x = embedded("test", n=batch, seed=0).images
    tmodel = to_torch(model)
    relus = [m for m in tmodel.features if isinstance(m, torch.nn.ReLU)]
    return run("small", desc, model, tmodel, x, to_torch_input(x), relus[-1], reps)


def workload_vgg16(batch: int, reps: int) -> dict:
    tv, model = U.vgg16_pair(0)
    x = np.random.default_rng(0).random((batch, 224, 224, 3), dtype=np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return run("vgg16", "torchvision vgg16(weights=None) and its NNX port", model, tv, x, xt,
               tv.features[29], reps)


def run(name, desc, model, tmodel, x, xt, cam_layer, reps) -> dict:
    b = len(x)
    print(f"[{name}] batch {b}: {desc}", flush=True)
    with torch.no_grad():
        logits_t = tmodel(xt).numpy()
    logits_j = np.asarray(model(jnp.asarray(x)))
    t = logits_j.argmax(-1).astype(np.int32)
    twin_err = float(np.abs(logits_t - logits_j).max())
    j = jax_side(model, x, t, reps)
    p = torch_side(tmodel, xt, t, cam_layer, reps)
    ours, theirs = j.pop("_maps"), np.clip(p.pop("_maps"), 0, 1)
    out = {
        "workload": name, "model": desc, "batch": b, "image": list(x.shape[1:]),
        "twin_logits_max_abs_diff": twin_err,
        "hybrid_maps_max_abs_diff": float(np.abs(ours - theirs).max()),
        "jax": j, "torch": p,
        "ratios": {
            "jax_hybrid_over_input_gradient": j["hybrid"]["median"]
            / j["input_gradient"]["median"],
            "jax_hybrid_over_input_gradient_engine": j["hybrid"]["median"]
            / j["input_gradient_engine"]["median"],
            "peer_pipeline_over_jax_hybrid": p["hybrid"]["median"] / j["hybrid"]["median"],
            "peer_pipeline_over_jax_hybrid_eager": p["hybrid"]["median"]
            / j["hybrid_eager"]["median"],
        },
    }
    for k in ("forward", "input_gradient", "gradcam_pp", "lrp"):
        out["ratios"][f"torch_over_jax_{k}"] = p[k]["median"] / j[k]["median"]
    return out


def markdown(info: dict, results: list[dict], args) -> str:
    parts = ["# bench_hybrid", "", U.machine_md(info), "",
             f"Command: `python benchmarks/bench_hybrid.py {' '.join(args)}`", ""]
    for r in results:
        parts += [f"## {r['workload']}, batch {r['batch']}, image {tuple(r['image'])}", "",
                  f"Model: {r['model']}. Twin logits max |diff| "
                  f"{r['twin_logits_max_abs_diff']:.2e}; hybrid maps max |diff| "
                  "(jaxlrp vs peers, peers clipped to [0, 1]) "
                  f"{r['hybrid_maps_max_abs_diff']:.2e}.", ""]
        rows = []
        for k in ("forward", "input_gradient", "gradcam_pp", "lrp", "hybrid"):
            jj, tt = r["jax"][k], r["torch"][k]
            rows.append([k, jj["median"], jj["compile"], tt["median"],
                         tt["median"] / jj["median"]])
        jg = r["jax"]["input_gradient_engine"]
        rows.insert(2, ["input_gradient (through jaxlrp's engine)", jg["median"], jg["compile"],
                        r["torch"]["input_gradient"]["median"],
                        r["torch"]["input_gradient"]["median"] / jg["median"]])
        je = r["jax"]["hybrid_eager"]
        rows.append(["hybrid (eager jaxlrp.hybrid)", je["median"], je["compile"],
                     r["torch"]["hybrid"]["median"],
                     r["torch"]["hybrid"]["median"] / je["median"]])
        parts += [U.table(rows, ["step", "JAX median s", "JAX compile s", "PyTorch/peers median s",
                                 "speed-up"]), ""]
        rr = r["ratios"]
        parts += ["- JAX hybrid / JAX input gradient: "
                  f"**{rr['jax_hybrid_over_input_gradient']:.2f}x** (target <= 1.6); "
                  "over the same input gradient through jaxlrp's engine: "
                  f"{rr['jax_hybrid_over_input_gradient_engine']:.2f}x",
                  "- peers' pipeline / jaxlrp hybrid: "
                  f"**{rr['peer_pipeline_over_jax_hybrid']:.2f}x** (jitted), "
                  f"{rr['peer_pipeline_over_jax_hybrid_eager']:.2f}x (eager call)", ""]
    return "\n".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer reps; VGG16 at batch 8 only")
    ap.add_argument("--workload", choices=("small", "vgg16", "both"), default="both")
    ap.add_argument("--small-batch", type=int, default=256)
    ap.add_argument("--vgg-batches", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--name", default="bench_hybrid", help="results file name")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    vgg_batches = args.vgg_batches or ([8] if args.quick else [8, 32])
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    t0 = time.time()
    results = []
    if args.workload in ("small", "both"):
        results.append(workload_small(args.small_batch, reps))
    if args.workload in ("vgg16", "both"):
        for b in vgg_batches:
            results.append(workload_vgg16(b, max(2, reps - 2) if b >= 32 else reps))
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_s"] = round(time.time() - t0, 1)
    info["torch_threads"] = torch.get_num_threads()
    figures = {"machine": info, "args": vars(args), "results": results}
    U.write_results(args.name, figures, markdown(info, results, sys.argv[1:] if argv is None
                                                 else argv))
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}")
    print("ratios:")
    for r in results:
        rr = r["ratios"]
        print(f"  {r['workload']} batch {r['batch']}: hybrid/grad "
              f"{rr['jax_hybrid_over_input_gradient']:.2f}x (<= 1.6; "
              f"{rr['jax_hybrid_over_input_gradient_engine']:.2f}x over the engine's "
              "gradient); peers/hybrid "
              f"{rr['peer_pipeline_over_jax_hybrid']:.2f}x jitted, "
              f"{rr['peer_pipeline_over_jax_hybrid_eager']:.2f}x eager")


if __name__ == "__main__":
    main()
