#!/usr/bin/env bash
# The GPU probe: one command on a machine with one NVIDIA GPU (made for the workplace's H100/H200
# machines: Python 3.12, torch, Lightning and TensorBoard installed, no Hydra, nothing downloadable),
# under 8 minutes. Before, here: python benchmarks/make_probe_files.py (fills the git-ignored .gpu_probe/
# with Hydra's wheels, the fp16 VGG-16 file and the training photos). README, Performance, says how to
# run it there. Prints the side-by-side tables last; gpu_probe.json, the curve plot, the log and the
# gpu_fast model land in $OUT (default benchmarks/results/probe/), the JSON also in benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_probe
OUT=${OUT:-benchmarks/results/probe}
mkdir -p "$OUT"
if [ ! -d "$CARRY/whl" ]; then
    echo "error: $CARRY/whl: missing; run python benchmarks/make_probe_files.py first" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nst-ff-site \
    "$CARRY"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/nst-ff-site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# A fresh compile cache: the probe measures a first run's compilations, and later parts reuse them.
export TORCHINDUCTOR_CACHE_DIR=/tmp/nst-ff-probe/inductor
rm -rf /tmp/nst-ff-probe
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
python3 benchmarks/gpu_probe.py --out "$OUT" --carry "$CARRY" "$@" 2>&1 | tee "$OUT/gpu_probe.log"
