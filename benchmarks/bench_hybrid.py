"""Speed of jaxlrp's hybrid and its parts against the peers' PyTorch pipeline.

Workloads (same weights on both sides, same images, same targets):

* ``small``: the default embedded model (64x64, batch 256) and its PyTorch twin
  (``jaxlrp.twins.to_torch``);
* ``vgg16``: torchvision ``vgg16(weights=None)`` (random weights) at 224x224 and its
  port to a Flax NNX VGG16 (``benchmarks/_common.py``), batch 8 (and 32 without
  ``--quick``);
* ``vit``: the ViT of ``jaxlrp.models.vit`` (random weights, its default 64x64 config,
  batch 256; ``--vit-config s16``: ViT-S/16 at 224x224, batch 8), JAX only (no twin);
  skipped with a message while that module is missing; steps the library cannot run
  on it yet (LRP needs attention rules) are recorded as errors.

Per side: forward, input gradient, Grad-CAM++, LRP (paper composite: Alpha1-Beta0 on
convs, Epsilon(0) on dense), the full hybrid.

The floor (``_floor.py``): the least work each explainer must do, with the same fast
operations: floor(CAM) = forward + backward from the logits to the CAM layer;
floor(LRP) = forward + z+ forward (W+ on convs) + its transposed pass; floor(hybrid) =
their union (one shared forward). Each is one jitted function, timed with the
library's pooling rule and (``--floor-pools all``, the default without ``--quick``)
with each pooling lowering forced; the floor is the fastest. Each explainer's ratio to
its floor is reported next to its ratio to the peers, and every ratio also with the
compile time included (first calls: trace + compile + run, both sides).

The peers' pipeline is pytorch-grad-cam GradCAMPlusPlus + Captum LRP + per-image
cv2.GaussianBlur((5, 5), 4). JAX figures are ``jax.jit``-compiled functions (compile
time reported separately), plus the public eager ``jaxlrp.hybrid`` call. Medians of
repeated runs after a warm-up.

Usage::

    python benchmarks/bench_hybrid.py --quick          # small + VGG16 batch 8, few reps
    python benchmarks/bench_hybrid.py                  # small + VGG16 batch 8 and 32
    python benchmarks/bench_hybrid.py --workload small
    python benchmarks/bench_hybrid.py --tiny --workload all --name scratch   # smoke test

Ratios printed last: ``hybrid / input gradient`` (JAX, target <= 1.6),
``peers' pipeline / jaxlrp hybrid`` (speed-up; targets >= 10 small, >= 1.7 VGG16),
``explainer / its floor`` (target <= 1.25 for LRP and the hybrid), and the same with
compile time included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402
import _floor as F  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlrp._hybrid import hybrid  # noqa: E402
from jaxlrp._lrp.engine import forward_env, lrp  # noqa: E402
from jaxlrp._lrp.graph import trace  # noqa: E402
from jaxlrp._tracing import as_adapter  # noqa: E402
from jaxlrp.cam import gradcam_pp, resolve_layer  # noqa: E402

POOLS = {"rule": None, "xla": ("xla", "xla"), "select": ("select", "select")}
FLOOR_OF = {"gradcam_pp": "cam", "lrp": "lrp", "hybrid": "hybrid"}


def jax_side(model, x, t, reps: int, floor_pools: str = "all", tolerant: bool = False) -> dict:
    """Time the JAX functions on (x, t); the model's state is a jit argument.

    ``tolerant``: record a step that raises as ``{"error": message}`` (the ViT, whose
    LRP needs attention rules) instead of stopping.
    """
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

    xj, tj = jnp.asarray(x), jnp.asarray(t)
    try:
        layer = resolve_layer(as_adapter(model), xj, None)[0]
    except Exception as err:  # noqa: BLE001 - recorded (ViT: no CAM layer yet)
        if not tolerant:
            raise
        layer = None
        print(f"  jax   no default CAM layer: {err}", flush=True)
    fns = {
        "forward": jax.jit(lambda s, xx: m(s)(xx)),
        "input_gradient": jax.jit(lambda s, xx, tt: jax.grad(logit_sum)(xx, s, tt)),
        "input_gradient_engine": jax.jit(
            lambda s, xx, tt: jax.grad(engine_logit_sum)(xx, s, tt)),
        "gradcam_pp": jax.jit(lambda s, xx, tt: gradcam_pp(m(s), xx, tt)),
        "lrp": jax.jit(lambda s, xx, tt: lrp(m(s), xx, tt)),
        "hybrid": jax.jit(lambda s, xx, tt: hybrid(m(s), xx, tt)),
    }
    pools = ("rule", "xla", "select") if floor_pools == "all" else ("rule",)
    for kind in F.FLOORS:
        if kind in ("cam", "hybrid") and layer is None:
            continue
        for pool in pools:
            fns[f"floor_{kind}_{pool}"] = jax.jit(F.floor_fn(kind, m, layer, POOLS[pool]))
    res = {"cam_layer": layer}
    for name, fn in fns.items():
        args = (state, xj) if name == "forward" else (state, xj, tj)
        try:
            res[name] = U.timeit(lambda fn=fn, args=args: fn(*args), reps=reps)
        except Exception as err:  # noqa: BLE001
            if not tolerant:
                raise
            res[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(f"  jax   {name:21s} FAILED: {res[name]['error'][:160]}", flush=True)
            continue
        print(f"  jax   {name:21s} median {res[name]['median']:.4f} s "
              f"(first call {res[name]['first']:.2f} s)", flush=True)
    for kind in F.FLOORS:  # the floor: the fastest pooling lowering
        runs = {p: res[f"floor_{kind}_{p}"] for p in pools
                if "median" in res.get(f"floor_{kind}_{p}", {})}
        if runs:
            best = min(runs, key=lambda p: runs[p]["median"])
            res[f"floor_{kind}"] = {**runs[best], "pool": best}
    if "error" not in res["hybrid"]:
        res["hybrid_eager"] = U.timeit(lambda: hybrid(model, xj, tj), reps=reps)
        print(f"  jax   {'hybrid (eager)':21s} median {res['hybrid_eager']['median']:.4f} s",
              flush=True)
        res["_maps"] = np.asarray(fns["hybrid"](state, xj, tj))
    return res


NO_PEERS = False  # --no-peers: JAX side only (a machine without captum / grad-cam)
TORCH_DEVICE = "cpu"  # --torch-device: where the peers run (cuda on a GPU machine)


def torch_side(tmodel, xt, t, cam_layer, reps: int) -> dict:
    fns = {
        "forward": lambda: U.torch_forward(tmodel, xt),
        "input_gradient": lambda: U.torch_input_gradient(tmodel, xt, t),
        "gradcam_pp": lambda: U.peer_gradcam_pp(tmodel, xt, t, cam_layer),
        "lrp": lambda: U.peer_lrp(tmodel, xt, t),
        "hybrid": lambda: U.peer_hybrid_on_device(tmodel, xt, t, cam_layer),
    }
    res = {}
    for name, fn in fns.items():
        res[name] = U.timeit(fn, reps=reps)
        print(f"  torch {name:15s} median {res[name]['median']:.4f} s", flush=True)
    res["_maps"] = U.peer_hybrid_on_device(tmodel, xt, t, cam_layer)
    return res


def workload_small(batch: int, reps: int, floor_pools: str = "all") -> dict:
    from jaxlrp.data import embedded
    from jaxlrp.twins import to_torch, to_torch_input

    model, desc = U.small_model()
    x = embedded("test", n=batch, seed=0).images
    tmodel = to_torch(model)
    relus = [m for m in tmodel.features if isinstance(m, torch.nn.ReLU)]
    return run("small", desc, model, tmodel, x, to_torch_input(x), relus[-1], reps, floor_pools)


def workload_vgg16(batch: int, reps: int, floor_pools: str = "all") -> dict:
    tv, model = U.vgg16_pair(0)
    x = np.random.default_rng(0).random((batch, 224, 224, 3), dtype=np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return run("vgg16", "torchvision vgg16(weights=None) and its NNX port", model, tv, x, xt,
               tv.features[29], reps, floor_pools)


VIT_CONFIGS = {
    "default": {},  # jaxlrp.models.vit.CONFIG: 64x64, conv stem + 2x2 patch conv, 8x8 tokens
    "s16": {"input_size": 224, "patch_size": 16, "dim": 384, "depth": 12, "num_heads": 6,
            "mlp_dim": 1536, "num_classes": 1000, "stem_channels": ()},
}


def workload_vit(batch: int, reps: int, floor_pools: str = "all",
                 config: str = "default") -> dict | None:
    """The ViT of ``jaxlrp.models.vit`` (random weights), JAX only; None when missing."""
    try:
        from jaxlrp.models.vit import build_vit
    except ImportError as err:
        print(f"[vit] skipped: jaxlrp.models.vit is not in this checkout yet ({err})",
              flush=True)
        return None
    model = build_vit(0, **VIT_CONFIGS[config])
    size = model.input_size
    x = np.random.default_rng(0).random((batch, *size, model.in_channels), dtype=np.float32)
    return run("vit", f"jaxlrp.models.vit.ViT, config {config!r}, random weights", model,
               None, x, None, None, reps, floor_pools)


def run(name, desc, model, tmodel, x, xt, cam_layer, reps, floor_pools="all") -> dict:
    b = len(x)
    print(f"[{name}] batch {b}: {desc}", flush=True)
    logits_j = np.asarray(model(jnp.asarray(x)))
    t = logits_j.argmax(-1).astype(np.int32)
    j = jax_side(model, x, t, reps, floor_pools, tolerant=tmodel is None or NO_PEERS)
    out = {"workload": name, "model": desc, "batch": b, "image": list(x.shape[1:]), "jax": j}
    if tmodel is not None and not NO_PEERS:
        tmodel, xt = tmodel.to(TORCH_DEVICE), xt.to(TORCH_DEVICE)  # cam_layer moves with it
        out["torch_device"] = TORCH_DEVICE
        with torch.no_grad():
            logits_t = tmodel(xt).cpu().numpy()
        p = torch_side(tmodel, xt, t, cam_layer, reps)
        ours, theirs = j.pop("_maps"), np.clip(p.pop("_maps"), 0, 1)
        out.update({"twin_logits_max_abs_diff": float(np.abs(logits_t - logits_j).max()),
                    "hybrid_maps_max_abs_diff": float(np.abs(ours - theirs).max()),
                    "torch": p})
    else:
        j.pop("_maps", None)
    out["ratios"] = ratios(j, out.get("torch"))
    return out


def _ok(r: dict | None, key: str) -> bool:
    return r is not None and "median" in r.get(key, {})


def ratios(j: dict, p: dict | None) -> dict:
    """Speed-ups over the peers, ratios to the floors; ``*_cold``: with compile time
    (first calls of both sides: trace + compile + run for JAX)."""
    r: dict = {}
    if _ok(j, "hybrid") and _ok(j, "input_gradient"):
        r["jax_hybrid_over_input_gradient"] = j["hybrid"]["median"] / j["input_gradient"]["median"]
        r["jax_hybrid_over_input_gradient_engine"] = (
            j["hybrid"]["median"] / j["input_gradient_engine"]["median"])
    if p is not None:
        for k in ("forward", "input_gradient", "gradcam_pp", "lrp", "hybrid"):
            if _ok(j, k):
                key = "peer_pipeline_over_jax_hybrid" if k == "hybrid" else f"torch_over_jax_{k}"
                r[key] = p[k]["median"] / j[k]["median"]
                r[key + "_cold"] = p[k]["first"] / j[k]["first"]
        if _ok(j, "hybrid_eager"):
            r["peer_pipeline_over_jax_hybrid_eager"] = (
                p["hybrid"]["median"] / j["hybrid_eager"]["median"])
            r["peer_pipeline_over_jax_hybrid_eager_cold"] = (
                p["hybrid"]["first"] / j["hybrid_eager"]["first"])
    for k, f in FLOOR_OF.items():
        if _ok(j, k) and _ok(j, f"floor_{f}"):
            fl = j[f"floor_{f}"]
            r[f"jax_{k}_over_floor"] = j[k]["median"] / fl["median"]
            r[f"jax_{k}_over_floor_cold"] = j[k]["first"] / fl["first"]
            if p is not None:
                r[f"peer_{k}_over_floor"] = p[k]["median"] / fl["median"]
    if _ok(j, "forward") and _ok(j, "floor_forward"):
        r["jax_forward_over_floor_forward"] = j["forward"]["median"] / j["floor_forward"]["median"]
    return r


def _cell(r: dict, key: str, field: str = "median") -> object:
    v = r.get(key, {})
    return v.get(field, v.get("error", "")[:60]) if isinstance(v, dict) else ""


def markdown(info: dict, results: list[dict], args) -> str:
    nan = float("nan")
    parts = ["# bench_hybrid", "", U.machine_md(info), "",
             f"Command: `python benchmarks/bench_hybrid.py {' '.join(args)}`", ""]
    for r in results:
        j, p, rr = r["jax"], r.get("torch"), r["ratios"]
        parts += [f"## {r['workload']}, batch {r['batch']}, image {tuple(r['image'])}", "",
                  f"Model: {r['model']}. CAM layer: {j.get('cam_layer')}."]
        if p is not None:
            parts += [f"Twin logits max |diff| {r['twin_logits_max_abs_diff']:.2e}; hybrid "
                      "maps max |diff| (jaxlrp vs peers, peers clipped to [0, 1]) "
                      f"{r['hybrid_maps_max_abs_diff']:.2e}."]
        parts += [""]
        rows = []
        steps = ["forward", "input_gradient", "input_gradient_engine", "gradcam_pp", "lrp",
                 "hybrid", "hybrid_eager"]
        for k in steps:
            if k not in j:
                continue
            tk = {"input_gradient_engine": "input_gradient",
                  "hybrid_eager": "hybrid"}.get(k, k)
            row = [k, _cell(j, k), _cell(j, k, "compile"), _cell(j, k, "first")]
            if p is not None:
                row += [p[tk]["median"], p[tk]["first"],
                        p[tk]["median"] / j[k]["median"] if "median" in j[k] else "",
                        p[tk]["first"] / j[k]["first"] if "first" in j[k] else ""]
            fk = FLOOR_OF.get(tk)
            row += [j[k]["median"] / j[f"floor_{fk}"]["median"]
                    if fk and _ok(j, k) and _ok(j, f"floor_{fk}") else ""]
            rows.append(row)
        head = ["step", "JAX median s", "JAX compile s", "JAX first call s"]
        if p is not None:
            head += ["PyTorch/peers median s", "PyTorch/peers first s", "speed-up",
                     "speed-up incl. compile"]
        head += ["/ its floor"]
        parts += [U.table(rows, head), ""]
        frows = [[f"floor({k})", j[f"floor_{k}"]["median"], j[f"floor_{k}"]["compile"],
                  j[f"floor_{k}"]["pool"],
                  ", ".join(f"{q} {j[f'floor_{k}_{q}']['median']:.4g}" for q in POOLS
                            if _ok(j, f"floor_{k}_{q}"))]
                 for k in F.FLOORS if _ok(j, f"floor_{k}")]
        parts += [U.table(frows, ["floor", "median s", "compile s", "fastest pooling",
                                  "median s per pooling lowering"]), ""]
        bullets = []
        if "jax_hybrid_over_input_gradient" in rr:
            bullets.append("- JAX hybrid / JAX input gradient: "
                           f"**{rr['jax_hybrid_over_input_gradient']:.2f}x** (target <= 1.6);"
                           " over the same input gradient through jaxlrp's engine: "
                           f"{rr['jax_hybrid_over_input_gradient_engine']:.2f}x")
        if "peer_pipeline_over_jax_hybrid" in rr:
            bullets.append("- peers' pipeline / jaxlrp hybrid: "
                           f"**{rr['peer_pipeline_over_jax_hybrid']:.2f}x** (jitted), "
                           f"{rr.get('peer_pipeline_over_jax_hybrid_eager', float('nan')):.2f}x"
                           " (eager call); with compile time (first calls): "
                           f"{rr['peer_pipeline_over_jax_hybrid_cold']:.2f}x (jitted), "
                           f"{rr.get('peer_pipeline_over_jax_hybrid_eager_cold', nan):.2f}x"
                           " (eager)")
        for k in FLOOR_OF:
            if f"jax_{k}_over_floor" in rr:
                peer = (f"; peers / floor {rr[f'peer_{k}_over_floor']:.2f}x"
                        if f"peer_{k}_over_floor" in rr else "")
                target = " (target <= 1.25)" if k in ("lrp", "hybrid") else ""
                bullets.append(f"- {k} / its floor: **{rr[f'jax_{k}_over_floor']:.2f}x**{target}"
                               f"; with compile time {rr[f'jax_{k}_over_floor_cold']:.2f}x"
                               f"{peer}")
        parts += bullets + [""]
    parts += ["Floors (`benchmarks/_floor.py`): floor(cam) = forward + backward from the "
              "target logits to the CAM layer; floor(lrp) = forward + z+ forward (W+ on "
              "convs) + its transposed pass; floor(hybrid) = their union with one shared "
              "forward. Each is the fastest over the pooling lowerings tried.", ""]
    return "\n".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer reps; VGG16 at batch 8 only")
    ap.add_argument("--tiny", action="store_true",
                    help="a smoke test: small batch 8, VGG16 batch 1, 2 reps, rule floors")
    ap.add_argument("--workload", choices=("small", "vgg16", "vit", "both", "all"), nargs="+",
                    default=["both"], help="both = small + vgg16; all = small + vgg16 + vit")
    ap.add_argument("--small-batch", type=int, default=None)
    ap.add_argument("--vgg-batches", type=int, nargs="+", default=None)
    ap.add_argument("--vit-batch", type=int, default=None)
    ap.add_argument("--vit-config", choices=tuple(VIT_CONFIGS), default="default")
    ap.add_argument("--floor-pools", choices=("rule", "all"), default=None,
                    help="floors with the library's pooling rule only, or with every lowering")
    ap.add_argument("--torch-device", default="cpu", help="cpu or cuda: where the peers run")
    ap.add_argument("--no-peers", action="store_true", help="time the JAX side only")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--name", default="bench_hybrid", help="results file name")
    args = ap.parse_args(argv)
    work = set(args.workload)
    work |= {"small", "vgg16"} if work & {"both", "all"} else set()
    work |= {"vit"} if "all" in work else set()
    global TORCH_DEVICE, NO_PEERS
    TORCH_DEVICE, NO_PEERS = args.torch_device, args.no_peers
    reps = args.reps or (2 if args.tiny else 3 if args.quick else 5)
    small_batch = args.small_batch or (8 if args.tiny else 256)
    vgg_batches = args.vgg_batches or ([1] if args.tiny else [8] if args.quick else [8, 32])
    vit_batch = args.vit_batch or (8 if args.tiny else 256 if args.vit_config == "default"
                                   else 8)
    floor_pools = args.floor_pools or ("rule" if args.quick or args.tiny else "all")
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    t0 = time.time()
    results = []
    if "small" in work:
        results.append(workload_small(small_batch, reps, floor_pools))
    if "vgg16" in work:
        for b in vgg_batches:
            results.append(workload_vgg16(b, max(2, reps - 2) if b >= 32 else reps,
                                          floor_pools))
    if "vit" in work:
        r = workload_vit(vit_batch, reps, floor_pools, args.vit_config)
        if r is not None:
            results.append(r)
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
        parts = []
        if "jax_hybrid_over_input_gradient" in rr:
            parts.append(f"hybrid/grad {rr['jax_hybrid_over_input_gradient']:.2f}x (<= 1.6)")
        if "peer_pipeline_over_jax_hybrid" in rr:
            parts.append(f"peers/hybrid {rr['peer_pipeline_over_jax_hybrid']:.2f}x jitted, "
                         f"{rr['peer_pipeline_over_jax_hybrid_eager']:.2f}x eager, "
                         f"{rr['peer_pipeline_over_jax_hybrid_cold']:.2f}x incl. compile")
        for k in FLOOR_OF:
            if f"jax_{k}_over_floor" in rr:
                target = " (<= 1.25)" if k in ("lrp", "hybrid") else ""
                parts.append(f"{k}/floor {rr[f'jax_{k}_over_floor']:.2f}x{target} "
                             f"({rr[f'jax_{k}_over_floor_cold']:.2f}x incl. compile)")
        print(f"  {r['workload']} batch {r['batch']}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
