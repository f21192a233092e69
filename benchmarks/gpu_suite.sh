#!/usr/bin/env bash
# All GPU benchmarks in one go, each under its own time limit, for a short GPU lease.
#
#   bash benchmarks/gpu_suite.sh [COPY_TO_DIR]
#
# Order: what matters most first (the S2 cell at 100 nm through the device stepper, whose
# host-loop reference of 2026-11-26 is committed as s2_full_run_gpu_nvidia_h200.json; then
# the kernels). Each script
# writes benchmarks/results/<name>_<device>.json when it finishes; a script cut off by its
# limit writes nothing, but its log (in COPY_TO_DIR, if given) keeps what it printed.
# After each script the device's JSON and PNG files are copied to COPY_TO_DIR, if given.
# Measured on an NVIDIA H200 (2026-11-26): S2 whole protocol 153 s, potentials about
# 90 s, elasticity about 60 s, diffusion under 60 s, the resolution study about 60 s.
set -uo pipefail
cd "$(dirname "$0")/.."
dest="${1:-}"
export PYTHONUNBUFFERED=1

step() {  # step LIMIT_S NAME ARGS...
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    if [[ -n "$dest" ]]; then
        timeout "$limit" python3 "$@" 2>&1 | tee "$dest/$name.log" | grep -v " calls, "
        cp benchmarks/results/*gpu*.json benchmarks/results/*gpu*.png "$dest"/ 2>/dev/null
    else
        timeout "$limit" python3 "$@" 2>&1 | grep -v " calls, "
    fi
}

[[ -n "$dest" ]] && mkdir -p "$dest"
step 300 stepper benchmarks/stepper.py --voxel-sizes 1e-7 --drivers device
step 120 diffusion benchmarks/diffusion.py --sizes 64 128 256
step 150 elasticity benchmarks/elasticity.py
step 150 potentials benchmarks/potentials.py --sizes 64 128 256
step 120 cell_resolution benchmarks/cell_resolution.py --voxel-sizes 1e-6 4e-7 2e-7 1e-7 --minutes 10
