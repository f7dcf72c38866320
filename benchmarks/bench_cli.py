"""Wall time of the command line, cold and on the second run (persistent compilation cache).

Each command runs in a fresh process (as a user types it), twice with an empty
compilation-cache folder of its own (first run: compile and fill the cache; second run:
load from it), and twice with ``--no-compilation-cache`` for comparison:

* ``jaxlrp explain <one photo> --model efficientnet-lite0 --method hybrid``
  (targets on 2 cores: <= 12 s cold, <= 5 s on the second run);
* ``jaxlrp demo --quick`` (all four parts; the target of the default model's part
  alone, <= 10 s on the second run, is read from the part times the demo prints, and
  the whole command's time is an upper bound).

The floor of a command (the least work any run of it must do): a process that only
starts Python and imports the command line and its figure module, plus the same
command repeated inside one warm process (its model, trace and executable already in
memory: it loads the weights, explains and writes the figures). Ratios to it are given
for the second run and the cold run.

Usage::

    python benchmarks/bench_cli.py             # 1 repetition of each
    python benchmarks/bench_cli.py --reps 3    # medians of 3

Writes ``results/bench_cli.json`` and ``.md`` (``--name`` to change).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as U  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTO = Path("jaxlrp") / "assets" / "photos" / "chelsea.jpg"  # relative to ROOT (the cwd)
COMMANDS = {
    "explain_one_photo": ["explain", str(PHOTO), "--model", "efficientnet-lite0",
                          "--method", "hybrid", "--no-progress"],
    "demo_quick": ["demo", "--quick", "--no-progress"],
}


def part_times(stdout: str) -> dict[str, float]:
    """``jaxlrp demo``'s in-process time of each part (its "part time" lines), by header."""
    parts, header = {}, None
    for line in stdout.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            header = line.split(" on ")[0]
        m = re.match(r"\s+part time: ([0-9.]+) s$", line)
        if m and header is not None:
            parts[header] = float(m.group(1))
    return parts


def run(args: list[str], cache: str | None, out: str, parts: dict | None = None) -> float:
    """Seconds of one ``python -m jaxlrp ARGS --out OUT`` in a new process (``parts``:
    filled with the demo's part times)."""
    env = {k: v for k, v in os.environ.items() if k != "JAXLRP_NO_COMPILATION_CACHE"}
    extra = []
    if cache is None:
        extra = ["--no-compilation-cache"]
    else:
        env["JAXLRP_COMPILATION_CACHE_DIR"] = cache
    cmd = [sys.executable, "-m", "jaxlrp", *extra, *args, "--out", out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    if parts is not None:
        parts.update(part_times(proc.stdout))
    return seconds


IMPORTS = "import os, jaxlrp.cli, jaxlrp.viz; os._exit(0)"
WARM = """
import sys, time
from jaxlrp.cli import main
argv, out = sys.argv[1:-1], sys.argv[-1]
assert main(argv + ["--out", out + "1"]) == 0
t0 = time.perf_counter()
assert main(argv + ["--out", out + "2"]) == 0
print("WARM", time.perf_counter() - t0)
"""


def floor(args: list[str], tmp: str) -> dict:
    """Seconds of the floor's two parts: ``imports`` (a new process that imports and
    exits) and ``warm`` (the command's second run inside one process)."""
    env = {k: v for k, v in os.environ.items() if k != "JAXLRP_NO_COMPILATION_CACHE"}
    env["JAXLRP_COMPILATION_CACHE_DIR"] = str(Path(tmp) / "xla-floor")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, env=env, check=True)
    imports = time.perf_counter() - t0
    proc = subprocess.run([sys.executable, "-c", WARM, *args, str(Path(tmp) / "w")], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"warm run of {args} failed:\n{proc.stderr[-2000:]}")
    warm = float(re.search(r"^WARM ([0-9.eE+-]+)$", proc.stdout, re.M).group(1))
    return {"imports": imports, "warm": warm, "floor": imports + warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1, help="repetitions (medians)")
    parser.add_argument("--name", default="bench_cli", help="results file name")
    args = parser.parse_args()
    info = U.machine()
    figures: dict = {"machine": info, "reps": args.reps, "commands": {}}
    rows, part_rows, floor_rows = [], [], []
    for name, cmd in COMMANDS.items():
        second_parts: dict[str, list[float]] = {}
        times: dict[str, list[float]] = {"cold": [], "second": [], "no_cache_1": [],
                                         "no_cache_2": [], "imports": [], "warm": [],
                                         "floor": []}
        for _ in range(args.reps):
            with tempfile.TemporaryDirectory() as tmp:
                cache = str(Path(tmp) / "xla")
                times["cold"].append(run(cmd, cache, str(Path(tmp) / "a")))
                parts: dict[str, float] = {}
                times["second"].append(run(cmd, cache, str(Path(tmp) / "b"), parts))
                for k, v in parts.items():
                    second_parts.setdefault(k, []).append(v)
                times["no_cache_1"].append(run(cmd, None, str(Path(tmp) / "c")))
                times["no_cache_2"].append(run(cmd, None, str(Path(tmp) / "d")))
                for k, v in floor(cmd, tmp).items():
                    times[k].append(v)
        med = {k: statistics.median(v) for k, v in times.items()}
        figures["commands"][name] = {"args": cmd, "seconds": times, "median": med}
        if second_parts:
            med_parts = {k: statistics.median(v) for k, v in second_parts.items()}
            figures["commands"][name]["second_run_part_seconds"] = med_parts
            part_rows += [[name, k, v] for k, v in med_parts.items()]
            print(f"{name}: second run, in-process part times {med_parts}", flush=True)
        rows.append([name, med["cold"], med["second"], med["no_cache_1"], med["no_cache_2"],
                     med["no_cache_2"] / med["second"]])
        floor_rows.append([name, med["imports"], med["warm"], med["floor"],
                           med["second"] / med["floor"], med["cold"] / med["floor"]])
        print(f"{name}: cold {med['cold']:.2f} s, second run {med['second']:.2f} s "
              f"(without the cache: {med['no_cache_1']:.2f} s, {med['no_cache_2']:.2f} s); "
              f"floor {med['floor']:.2f} s (imports {med['imports']:.2f} + warm "
              f"{med['warm']:.2f}): second run / floor {med['second'] / med['floor']:.2f}x, "
              f"cold / floor {med['cold'] / med['floor']:.2f}x", flush=True)
    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    md = "\n\n".join([
        "# Command-line wall time, cold and second run",
        U.machine_md(info),
        U.table(rows, ["command", "cold (s)", "second run (s)", "no cache, 1st (s)",
                       "no cache, 2nd (s)", "speed-up of the second run"]),
        "The floor: a process that only imports `jaxlrp.cli` and `jaxlrp.viz` and exits, "
        "plus the same command repeated inside one warm process (model structure, trace "
        "and executable in memory; it still loads the weights, explains and writes the "
        "figures):",
        U.table(floor_rows, ["command", "imports (s)", "warm repeat (s)", "floor (s)",
                             "second run / floor", "cold / floor (incl. compile)"]),
        "Second run, each part of the demo timed inside the process (model loading, "
        "explaining and figure writing; not the ~1.2 s of interpreter start and imports, "
        "which the whole command's time above includes once):",
        U.table(part_rows, ["command", "part", "second run (s)"]),
    ])
    print(f"results: {U.write_results(args.name, figures, md)}")


if __name__ == "__main__":
    main()
