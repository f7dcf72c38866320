#!/usr/bin/env bash
# Fill .whl/ (repository root) with the peers' wheels that the device machine's image
# lacks (pure-Python wheels; the image already has torch, torchvision, opencv, jax with
# CUDA, flax, scikit-image, scipy, pandas, matplotlib). Run here, where PyPI is reachable;
# then carry ".whl" in the device call and run benchmarks/device.sh there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$EXCLUDE" 2> /dev/null || echo '/.whl/' >> "$EXCLUDE"
PY=${PYTHON:-python3}
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl captum==0.9.0 quantus==0.6.0 ttach==0.0.3 cachetools
# grad-cam is published as a source archive only: build its (pure-Python) wheel here
"$PY" -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7
ls -la .whl  # about 0.8 MB
