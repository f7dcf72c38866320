"""Speed of jaxlrp's five default metrics against Quantus 0.6 on the same explanations.

Both sides score the same hybrid maps of the same images with the same perturbation
counts (the paper's protocol, ``jaxlrp.metrics.default_suite()``):

=======================  ==============================================================
FaithfulnessCorrelation  nr_runs=10, subset_size=224, perturb_baseline="black", Pearson
AvgSensitivity           nr_samples=10, lower_bound=0.2, Frobenius norms, uniform noise
Sparseness               Gini index of |a|
RelevanceRankAccuracy    ground-truth masks (embedded data: object masks; VGG16: boxes)
RandomLogit              SSIM between the maps of the true and a random other class
=======================  ==============================================================

AvgSensitivity and RandomLogit re-explain perturbed inputs: jaxlrp uses
``jaxlrp.hybrid``; Quantus gets the peers' hybrid pipeline (pytorch-grad-cam
GradCAMPlusPlus + Captum LRP + cv2 blur) as ``explain_func``, i.e. each library with its
own implementation of the method being evaluated. ``--explainer saliency`` uses a
gradient x input map on both sides instead, to time the metric machinery alone.

The floor of each metric (``_floor.py``) is the least model work it must do, with the
same fast operations: FaithfulnessCorrelation 1 + nr_runs = 11 forward passes of the
batch, AvgSensitivity nr_samples = 10 explanations, RandomLogit 1 explanation, where an
explanation's floor is floor(hybrid) (forward, backward to the CAM layer, z+ forward,
transposed pass) or, for ``saliency``, forward + input gradient; Sparseness and
RelevanceRankAccuracy need no model work (floor 0). Each metric's ratio to its floor is
reported next to its ratio to Quantus, and the suite's ratios also with compile time
included (first calls of both sides).

Usage::

    python benchmarks/bench_metrics.py --quick            # small model, batch 64
    python benchmarks/bench_metrics.py                    # small batch 256 + VGG16 batch 8
    python benchmarks/bench_metrics.py --tiny --name scratch  # smoke test (batch 8)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402
import _floor as F  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import quantus  # noqa: E402
import torch  # noqa: E402

from jaxlrp._hybrid import hybrid  # noqa: E402
from jaxlrp._tracing import as_adapter  # noqa: E402
from jaxlrp.metrics import default_suite  # noqa: E402

warnings.filterwarnings("ignore")


def jax_saliency(model, x, target):
    ad = as_adapter(model)

    def out(xx):
        return jnp.take_along_axis(ad.apply(ad.params, xx), jnp.asarray(target)[:, None], 1).sum()

    return jnp.abs(jax.grad(out)(x) * x).sum(-1)


TORCH_DEVICE = "cpu"  # --torch-device: where the model of the Quantus side runs


def torch_saliency(model, inputs, targets, **kwargs):
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32,
                        device=TORCH_DEVICE).requires_grad_()
    out = model(x)
    idx = torch.as_tensor(np.asarray(targets), device=TORCH_DEVICE)
    out[torch.arange(len(x), device=TORCH_DEVICE), idx].sum().backward()
    return (x.grad * x).abs().sum(1, keepdim=True).detach().numpy()


def peer_explain_factory(cam_layer):
    def explain(model, inputs, targets, **kwargs):
        xt = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=TORCH_DEVICE)
        t = np.asarray(targets).reshape(-1).astype(np.int64)
        return U.peer_hybrid_on_device(model, xt, t, cam_layer)[:, None]
    return explain


def jax_hybrid(model, x, target):
    return hybrid(model, x, target)


#: model work per metric in units of (floor forwards, floor explanations)
FLOOR_COUNTS = {"FaithfulnessCorrelation": (11, 0), "AvgSensitivity": (0, 10),
                "Sparseness": (0, 0), "RelevanceRankAccuracy": (0, 0), "RandomLogit": (0, 1)}


def floors(model, x, explainer: str, reps: int) -> dict:
    """Time floor(forward) and the explainer's floor (jitted, the library's pooling rule;
    targets: the model's argmax, as the metrics use)."""
    out = {}
    for kind in ("forward", "hybrid" if explainer == "hybrid" else "gradient"):
        key = "forward" if kind == "forward" else "explain"
        out[key] = F.time_floor(model, x, kind, reps)
        print(f"  floor   {kind:24s} median {out[key]['median']:.4f} s", flush=True)
    return out


def quantus_suite(num_classes: int) -> dict:
    return {
        "FaithfulnessCorrelation": quantus.FaithfulnessCorrelation(
            nr_runs=10, subset_size=224, perturb_baseline="black", disable_warnings=True),
        "AvgSensitivity": quantus.AvgSensitivity(
            nr_samples=10, lower_bound=0.2, disable_warnings=True),
        "Sparseness": quantus.Sparseness(disable_warnings=True),
        "RelevanceRankAccuracy": quantus.RelevanceRankAccuracy(disable_warnings=True),
        "RandomLogit": quantus.RandomLogit(num_classes=num_classes, disable_warnings=True),
    }


def run(name, desc, model, tmodel, x, masks, cam_layer, explainer: str, reps: int) -> dict:
    tmodel = tmodel.to(TORCH_DEVICE)  # the CAM layer is one of its modules: it moves too
    b = len(x)
    print(f"[{name}] batch {b}, explainer {explainer}: {desc}", flush=True)
    xj = jnp.asarray(x)
    y = np.asarray(jnp.argmax(as_adapter(model).forward(xj), -1)).astype(np.int32)
    if explainer == "hybrid":
        jexp, texp = jax_hybrid, peer_explain_factory(cam_layer)
    else:
        jexp, texp = jax_saliency, torch_saliency
    a = np.asarray(jexp(model, xj, jnp.asarray(y)))
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    k = int(as_adapter(model).forward(xj[:1]).shape[-1])
    res: dict = {"workload": name, "model": desc, "batch": b, "image": list(x.shape[1:]),
                 "explainer": explainer, "jax": {}, "quantus": {}, "scores": {}}
    key = jax.random.key(0)
    for m in default_suite():
        def jfn(m=m):
            return m.fn(model, xj, jnp.asarray(y), jnp.asarray(a), explain=jexp,
                        masks=jnp.asarray(masks), key=key)
        res["jax"][m.name] = U.timeit(jfn, reps=reps)
        res["scores"].setdefault(m.name, {})["jax_mean"] = float(np.nanmean(np.asarray(jfn())))
        print(f"  jax     {m.name:24s} median {res['jax'][m.name]['median']:.4f} s "
              f"(first {res['jax'][m.name]['first']:.2f} s)", flush=True)
    for mname, q in quantus_suite(k).items():
        def qfn(q=q):
            return q(model=tmodel, x_batch=xc, y_batch=y, a_batch=a[:, None],
                     s_batch=masks[:, None], channel_first=True, explain_func=texp,
                     device=TORCH_DEVICE, batch_size=b)
        # Quantus is plain Python/NumPy/PyTorch: no compilation, so fewer reps suffice.
        res["quantus"][mname] = U.timeit(qfn, reps=max(1, reps - 1), warmup=0)
        res["scores"][mname]["quantus_mean"] = float(np.nanmean(np.asarray(qfn(), float)))
        print(f"  quantus {mname:24s} median {res['quantus'][mname]['median']:.4f} s",
              flush=True)
    fl = floors(model, x, explainer, reps)
    res["floor_parts"] = fl
    res["floor"] = {n: c[0] * fl["forward"]["median"] + c[1] * fl["explain"]["median"]
                    for n, c in FLOOR_COUNTS.items()}
    jt = sum(v["median"] for v in res["jax"].values())
    qt = sum(v["median"] for v in res["quantus"].values())
    jf = sum(v["first"] for v in res["jax"].values())
    qf = sum(v["first"] for v in res["quantus"].values())
    ft = sum(res["floor"].values())
    res["ratios"] = {"quantus_over_jax_suite": qt / jt,
                     "quantus_over_jax_suite_cold": qf / jf,
                     "jax_suite_over_floor": jt / ft,
                     "quantus_suite_over_floor": qt / ft,
                     **{f"quantus_over_jax_{n}": res["quantus"][n]["median"]
                        / res["jax"][n]["median"] for n in res["jax"]},
                     **{f"jax_{n}_over_floor": res["jax"][n]["median"] / res["floor"][n]
                        for n in res["jax"] if res["floor"].get(n)}}
    res["suite_seconds"] = {"jax": jt, "quantus": qt, "jax_first": jf, "quantus_first": qf,
                            "jax_compile": sum(v["compile"] for v in res["jax"].values()),
                            "floor": ft}
    return res


def workload_small(batch, explainer, reps):
    from jaxlrp.data import embedded
    from jaxlrp.twins import to_torch

    model, desc = U.small_model()
    ds = embedded("test", n=batch, seed=0)
    tmodel = to_torch(model)
    relus = [m for m in tmodel.features if isinstance(m, torch.nn.ReLU)]
    return run("small", desc, model, tmodel, ds.images, ds.masks, relus[-1], explainer, reps)


def workload_vgg16(batch, explainer, reps):
    tv, model = U.vgg16_pair(0)
    x = np.random.default_rng(0).random((batch, 224, 224, 3), dtype=np.float32)
    masks = np.zeros((batch, 224, 224), bool)
    for i in range(batch):
        masks[i, 40 + 4 * i: 150 + 4 * i, 60: 170] = True
    return run("vgg16", "torchvision vgg16(weights=None) and its NNX port", model, tv, x, masks,
               tv.features[29], explainer, reps)


def markdown(info, results, argv) -> str:
    parts = ["# bench_metrics", "", U.machine_md(info), "",
             f"Command: `python benchmarks/bench_metrics.py {' '.join(argv)}`", ""]
    for r in results:
        parts += [f"## {r['workload']}, batch {r['batch']}, explainer {r['explainer']}", "",
                  f"Model: {r['model']}.", ""]
        fl = r["floor"]
        rows = [[n, r["jax"][n]["median"], r["jax"][n]["compile"], r["quantus"][n]["median"],
                 r["quantus"][n]["median"] / r["jax"][n]["median"],
                 r["quantus"][n]["first"] / r["jax"][n]["first"], fl[n],
                 r["jax"][n]["median"] / fl[n] if fl[n] else "",
                 r["scores"][n]["jax_mean"], r["scores"][n]["quantus_mean"]] for n in r["jax"]]
        ss, rr = r["suite_seconds"], r["ratios"]
        rows.append(["suite", ss["jax"], ss["jax_compile"], ss["quantus"],
                     rr["quantus_over_jax_suite"], rr["quantus_over_jax_suite_cold"],
                     ss["floor"], rr["jax_suite_over_floor"], "", ""])
        parts += [U.table(rows, ["metric", "jaxlrp median s", "jaxlrp compile s",
                                 "Quantus median s", "speed-up", "speed-up incl. compile",
                                 "floor s", "jaxlrp / floor", "jaxlrp mean score",
                                 "Quantus mean score"]), ""]
        fp = r["floor_parts"]
        parts += [f"- five-metric suite, Quantus / jaxlrp: "
                  f"**{rr['quantus_over_jax_suite']:.2f}x** (target >= 3 small, >= 2 VGG16); "
                  f"with compile time (first calls): {rr['quantus_over_jax_suite_cold']:.2f}x",
                  f"- suite / its floor: jaxlrp **{rr['jax_suite_over_floor']:.2f}x**, Quantus "
                  f"{rr['quantus_suite_over_floor']:.2f}x (floor(forward) "
                  f"{fp['forward']['median']:.4g} s, floor(explanation) "
                  f"{fp['explain']['median']:.4g} s)", ""]
    parts += ["Mean scores differ where the libraries differ by design: Quantus normalises "
              "maps by the batch max, draws its own random subsets/noise, and RandomLogit "
              "and AvgSensitivity re-explain with each library's own hybrid.", ""]
    return "\n".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small model at batch 64 only")
    ap.add_argument("--tiny", action="store_true", help="smoke test: small model, batch 8")
    ap.add_argument("--workload", choices=("small", "vgg16", "both"), default=None)
    ap.add_argument("--batch", type=int, default=None, help="small-model batch")
    ap.add_argument("--vgg-batch", type=int, default=8)
    ap.add_argument("--explainer", choices=("hybrid", "saliency"), default="hybrid")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--torch-device", default="cpu", help="cpu or cuda: Quantus's model")
    ap.add_argument("--name", default="bench_metrics")
    args = ap.parse_args(argv)
    global TORCH_DEVICE
    TORCH_DEVICE = args.torch_device
    workload = args.workload or ("small" if args.quick or args.tiny else "both")
    batch = args.batch or (8 if args.tiny else 64 if args.quick else 256)
    reps = args.reps or (1 if args.tiny else 2 if args.quick else 3)
    info = U.machine()
    print(f"machine: {info['cpu_count']} CPUs, load {info['loadavg']}", flush=True)
    t0 = time.time()
    results = []
    if workload in ("small", "both"):
        results.append(workload_small(batch, args.explainer, reps))
    if workload in ("vgg16", "both"):
        results.append(workload_vgg16(args.vgg_batch, args.explainer, reps))
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_s"] = round(time.time() - t0, 1)
    U.write_results(args.name, {"machine": info, "args": vars(args), "results": results},
                    markdown(info, results, sys.argv[1:] if argv is None else argv))
    print(f"\nload average start {info['loadavg']} end {info['loadavg_end']}")
    print("ratios:")
    for r in results:
        per = ", ".join(f"{n} {r['quantus'][n]['median'] / r['jax'][n]['median']:.1f}x"
                        for n in r["jax"])
        rr = r["ratios"]
        print(f"  {r['workload']} batch {r['batch']} ({r['explainer']}): suite "
              f"{rr['quantus_over_jax_suite']:.2f}x (>= 3 small, >= 2 VGG16), "
              f"{rr['quantus_over_jax_suite_cold']:.2f}x incl. compile; suite/floor "
              f"{rr['jax_suite_over_floor']:.2f}x (Quantus {rr['quantus_suite_over_floor']:.2f}x)"
              f"; {per}")


if __name__ == "__main__":
    main()
