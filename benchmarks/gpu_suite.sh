#!/usr/bin/env bash
# All GPU benchmarks in one go, each under its own time limit, for a short GPU lease.
#
#   bash benchmarks/gpu_suite.sh [COPY_TO_DIR] [--quick | --part2 | --all | --rest]
#
# --quick runs every script at CPU size (a dry run of the suite on a machine without a GPU).
# Without a flag: what the 2026-12-04 lease left unmeasured (the Pallas step, the stepper
# again, roofline at 512³); --part2 the rest of that list (gradient at 128³, inverse costs
# at 128³, the cell notebooks' GPU-size fits); --all every benchmark of the 2026-12-04 lease. Topics, most important first:
#   1. the S2 cell at 100 nm through the device stepper (issue #11 item 9: ≤ 60 s on one
#      H200; the host-loop reference of 2026-11-26 is s2_full_run_gpu_nvidia_h200.json);
#   2. the Pallas diffusion step, then the roofline of the hot stencils at 64³–512³ (#14 items 1–2);
#   3. the largest tortuosity volume that fits, and the cost per iteration (#14 item 3);
#   4. tortuosity against TauFactor 2 on the same GPU (#14 item 3);
#   5. gradient cost at 64³ and 128³ with 10³–10⁴ steps (#14 item 4);
#   6. the inverse-microstructure gradients at 64³/128³ (#16 item 5);
#   7. the two cell notebooks' "at GPU size" fits (#16 item 4).
# Each script writes benchmarks/results/<name>_<device>.json when it finishes; a script cut
# off by its limit writes nothing, but its log (in COPY_TO_DIR, if given) keeps what it
# printed. At the end the device's JSON and PNG files are copied to COPY_TO_DIR as one tar.
# TauFactor (not a dependency) is imported from PYTHONPATH when present; without it step 4
# fails on its own and the others run.
set -uo pipefail
cd "$(dirname "$0")/.."
dest="${1:-}"
quick="${2:-}"
export PYTHONUNBUFFERED=1

step() {  # step LIMIT_S NAME ARGS...
    local limit=$1 name=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit} s) $(date -u +%T)"
    if [[ -n "$dest" ]]; then
        timeout "$limit" python3 "$@" 2>&1 | tee "$dest/$name.log" | grep -v " calls, "
    else
        timeout "$limit" python3 "$@" 2>&1 | grep -v " calls, "
    fi
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

[[ -n "$dest" ]] && mkdir -p "$dest"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null
python3 -c "import jax; print(jax.__version__, jax.devices())"

if [[ "$quick" == "--quick" ]]; then
    step 300 stepper benchmarks/stepper.py --voxel-sizes 1e-6 --drivers device
    step 120 roofline benchmarks/roofline.py --sizes 32 --steps 4
    step 120 tortuosity_large benchmarks/tortuosity_large.py --sizes 48 64 --iters 20 60 --tile 32
    step 300 tortuosity_vs_taufactor benchmarks/tortuosity_vs_taufactor.py --sizes 48 --tf-device cpu
    step 120 gradient_n64 benchmarks/gradient.py --n 16 --steps 64 256 --tag _quick
    step 120 inverse_cost benchmarks/inverse_cost.py --n 16 --repeats 1
    step 300 cell_fit_gpu_size benchmarks/cell_fit_gpu_size.py --quick --max-iterations 4
elif [[ "$quick" == "--rest" ]]; then
    # a second lease call: what the first one (2026-12-04) cut off or failed
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    step 130 tortuosity_vs_taufactor benchmarks/tortuosity_vs_taufactor.py --sizes 256 512 --tf-device cuda
    step 140 roofline_256_512 benchmarks/roofline.py --gpu --sizes 256 512 --tag _256_512
    step 110 gradient_n64 benchmarks/gradient.py --n 64 --steps 1024 10000 --time-unchecked-max 1024 --repeats 1 --tag _n64
elif [[ "$quick" == "--all" ]]; then
    # everything the 2026-12-04 lease measured, in one list (about 11 min: two calls)
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    step 200 stepper benchmarks/stepper.py --voxel-sizes 1e-7 --drivers device
    step 150 roofline benchmarks/roofline.py --gpu
    step 50 tortuosity_large benchmarks/tortuosity_large.py --sizes 512 768 1000
    step 130 tortuosity_vs_taufactor benchmarks/tortuosity_vs_taufactor.py --sizes 256 512 --tf-device cuda
    step 110 gradient_n64 benchmarks/gradient.py --n 64 --steps 1024 10000 --time-unchecked-max 1024 --repeats 1 --tag _n64
    step 100 inverse_cost benchmarks/inverse_cost.py --n 64 128 --repeats 2
else
    # the next lease: what 2026-12-04 left unmeasured, most important first (about 9.5 min:
    # run it as two calls, "$dest" and then again with --part2)
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    if [[ "$quick" != "--part2" ]]; then
        # first GPU run of the Pallas diffusion step (written 2026-12-04, checked only in
        # the Pallas interpreter and by its CUDA lowering on CPU): agreement with the fused
        # step, GB/s, speed-up over the reference step
        step 100 roofline_pallas benchmarks/roofline.py --gpu --sizes 128 256 --skip conduction elasticity --tag _pallas
        # the S2 cell at 100 nm again (2026-12-04: 63.1 s, 12.8 s of it compilation)
        step 110 stepper benchmarks/stepper.py --voxel-sizes 1e-7 --drivers device
        # 512³, which the first lease did not reach (the constants capture is fixed)
        step 160 roofline_512 benchmarks/roofline.py --gpu --sizes 512 --tag _512
    else
        step 160 gradient_n128 benchmarks/gradient.py --n 128 --steps 1024 10000 --time-unchecked-max 0 --repeats 1 --tag _n128
        step 110 inverse_cost benchmarks/inverse_cost.py --n 64 128 --repeats 2
        # the two cell notebooks' "at GPU size" cells (#16 item 4)
        step 200 cell_fit_gpu_size benchmarks/cell_fit_gpu_size.py --max-iterations 12
        # particle runs keep the reference operator on GPUs (the fused XLA step was 0.74x
        # at 256^3 alone); measure the guarded chunk both ways before changing that
        step 60 particle_run_speed benchmarks/particle_run_speed.py --sizes 128 256 --chunk 128 --repeats 2 --memory-sizes
    fi
fi

if [[ -n "$dest" ]]; then
    tar czf "$dest/results.tgz" benchmarks/results/*gpu* 2>/dev/null
    ls -la "$dest"
fi
