#!/usr/bin/env bash
# Every GPU figure of issue #17 in one run, within 8 minutes of device time on one
# NVIDIA H200 (each step has its own time limit; a step that runs out is reported, the
# others still run). Results: results/device_<device>_<step>.json/.md (<device> is JAX's
# device kind, e.g. nvidia_h200) and results/device_<device>_summary.md.
#
#   benchmarks/device.sh            # on the device machine (from the repository root)
#   benchmarks/device.sh --quick    # shrunk sizes: a CPU smoke test (455 s measured on 2
#                                   # cores shared with 8 other jobs, load 17)
#
# Steps (full form):
#   hybrid   bench_hybrid.py: small model batch 256, VGG16 batch 64, the ViT (if
#            jaxlrp/models/vit.py exists): jaxlrp vs the peers (on CUDA), floors,
#            compile-inclusive ratios
#   metrics  bench_metrics.py: the five-metric suite vs Quantus, small model batch 256
#   scaling  bench_scaling.py --throughput-only: hybrid throughput vs batch 1 .. 1024
#   pooling  bench_pooling.py --quick: max-pool lowerings on this backend (the GPU rule)
#   memory   bench_memory.py: XLA's buffer plan of the hybrid vs batch, VGG16, chunked
#
# Python packages: if a .whl folder with wheels exists at the repository root (carried to
# the device machine), they are installed into a temporary folder first (no network there);
# benchmarks/device_wheels.sh fills it with the peers (captum, quantus, grad-cam and the
# dependencies the device image lacks). Without the peers the JAX side still runs
# (bench_hybrid --no-peers; the metric step is skipped).
# Results go to $JAXLRP_BENCH_RESULTS if set, else $OUT if set (the device tool brings
# that folder back), else benchmarks/results (full form) or a temporary folder (--quick).

set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    *) echo "usage: benchmarks/device.sh [--quick]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=$(mktemp -d -t jaxlrp-site-XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU: no JAX preallocation of 75% of its memory
export XLA_PYTHON_CLIENT_PREALLOCATE=false

DEV=$("$PY" -c 'import jax, re; print(re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_"))') || exit 1
BACKEND=$("$PY" -c 'import jax; print(jax.default_backend())')
if [ -n "${JAXLRP_BENCH_RESULTS:-}" ]; then RES=$JAXLRP_BENCH_RESULTS
elif [ -n "${OUT:-}" ]; then RES=$OUT
elif [ "$QUICK" = 1 ]; then RES=$(mktemp -d -t jaxlrp-device-XXXX)
else RES=$ROOT/benchmarks/results
fi
mkdir -p "$RES"
export JAXLRP_BENCH_RESULTS=$RES
PEERS=1
"$PY" -c "import captum, pytorch_grad_cam, quantus, cv2" 2> /dev/null || PEERS=0
TDEV=cpu
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null && TDEV=cuda
VIT=vit
"$PY" -c "import jaxlrp.models.vit" 2> /dev/null || VIT=""

P="device_${DEV}"
SUMMARY="$RES/${P}_summary.md"
{
  echo "# device.sh on ${DEV} (${BACKEND})"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ); quick=${QUICK}; peers installed=${PEERS}; torch device=${TDEV}"
  "$PY" -c 'import jax, jaxlib; print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, devices {jax.devices()}")'
  echo
} > "$SUMMARY"
T_START=$(date +%s)

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0 rc
  t0=$(date +%s)
  echo "=== ${name} (limit ${limit} s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$RES/${P}_${name}.log"
  rc=${PIPESTATUS[0]}
  {
    echo "## ${name}: exit ${rc}, $(( $(date +%s) - t0 )) s"
    echo
    echo '```'
    echo "$*"
    sed -n '/^ratios:/,$p' "$RES/${P}_${name}.log"
    echo '```'
    echo
  } >> "$SUMMARY"
}

NOPEERS=()
[ "$PEERS" = 0 ] && NOPEERS=(--no-peers)
if [ "$QUICK" = 1 ]; then
  # VGG16 left out here: its compilations alone take minutes on a small CPU
  step hybrid 420 "$PY" benchmarks/bench_hybrid.py --tiny --workload small $VIT \
    --torch-device "$TDEV" "${NOPEERS[@]}" --name "${P}_hybrid"
  [ "$PEERS" = 1 ] && step metrics 900 "$PY" benchmarks/bench_metrics.py --tiny \
    --torch-device "$TDEV" --name "${P}_metrics"
  step scaling 120 "$PY" benchmarks/bench_scaling.py --tiny --throughput-only --name "${P}_scaling"
  step pooling 120 "$PY" benchmarks/bench_pooling.py --quick --reps 2 --name "${P}_pooling"
  step memory 120 "$PY" benchmarks/bench_memory.py --tiny --time --name "${P}_memory"
else
  step hybrid 210 "$PY" benchmarks/bench_hybrid.py --workload small vgg16 $VIT --small-batch 256 \
    --vgg-batches 64 --vit-batch 256 --reps 5 --floor-pools rule --torch-device "$TDEV" \
    "${NOPEERS[@]}" --name "${P}_hybrid"
  [ "$PEERS" = 1 ] && step metrics 120 "$PY" benchmarks/bench_metrics.py --workload small \
    --batch 256 --reps 3 --torch-device "$TDEV" --name "${P}_metrics"
  step scaling 60 "$PY" benchmarks/bench_scaling.py --throughput-only --reps 5 --name "${P}_scaling"
  step pooling 45 "$PY" benchmarks/bench_pooling.py --quick --reps 5 --name "${P}_pooling"
  step memory 45 "$PY" benchmarks/bench_memory.py --workload vgg16 --batches 8 32 64 --chunk 8 \
    --time --reps 3 --name "${P}_memory"
fi
echo "total: $(( $(date +%s) - T_START )) s" | tee -a "$SUMMARY"
echo "results in $RES"
