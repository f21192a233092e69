"""Cost of differentiating a cell cycle (engine.solve.rollout): gradient vs forward time
and XLA's temporary memory vs the number of steps.

Run:  python benchmarks/cell_gradient.py [--steps 16 64 256] [--dtype float32]

The cell is the small one of tests/test_cell.py (19×19×16 voxels, 2C charge with a
time cap that the budget does not reach, so every step is a real step). For each step
budget n it compiles the forward rollout and the gradient of Σ (V − 3.8 V)² w.r.t. all
parameters (the whole CellParams pytree), reports the compiled temporary memory of both
(XLA memory analysis, bytes), the wall time per call after compilation, and the ratio;
with ⌈√n⌉-step checkpoint blocks the gradient's memory should grow like √n states, not
n. Results go to benchmarks/results/cell_gradient_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, time_call, write_result  # noqa: E402

from ssbx.engine.config.scenario import scenario_from_dict  # noqa: E402
from ssbx.engine.solve.cell_step import initial_state  # noqa: E402
from ssbx.engine.model.resolve import resolve_cell  # noqa: E402
from ssbx.engine.solve.rollout import rollout, step_budget  # noqa: E402

CELL = {
    "run": {"name": "gradient_cell"},
    "particle": {"radius_m": 2e-6, "voxel_size_m": 5e-7, "n_grains": 6},
    "material": {"name": "NCM111", "x_initial": 0.95},
    "cell": {"enabled": True, "areal_capacity_mAh_cm2": 0.05, "separator_thickness_m": 2e-6},
    "electrochemistry": {"time_step_s": 2.0},
    "mechanics": {"enabled": False},
    "protocol": {"kind": "cycling", "steps": ["charge at 0.5C until 4.3 V or 10 h"]},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    r = resolve_cell(scenario_from_dict(CELL), dtype)
    state = initial_state(r.geometry, r.params, r.x_initial, dtype)
    budget = step_budget(r)
    rows = []
    for n in args.steps:
        def loss(params, n=n):
            _, rec, valid = rollout(r.geometry, params, r.numerics, r.protocol, state, r.x_initial, n, budget)
            return jnp.sum(jnp.where(valid, (rec["voltage_V"] - 3.8) ** 2, 0.0))

        fwd = jax.jit(loss)
        grad = jax.jit(jax.grad(loss))
        mem = {}
        for name, fn in (("forward", fwd), ("gradient", grad)):
            analysis = fn.lower(r.params).compile().memory_analysis()
            mem[name] = None if analysis is None else int(analysis.temp_size_in_bytes)
        t_fwd, t_grad = time_call(fwd, r.params), time_call(grad, r.params)
        row = {"n_steps": n, "forward_s": t_fwd, "gradient_s": t_grad, "ratio": t_grad / t_fwd,
               "forward_temp_bytes": mem["forward"], "gradient_temp_bytes": mem["gradient"]}
        rows.append(row)
        print(f"n={n}: forward {t_fwd:.3f} s, gradient {t_grad:.3f} s ({row['ratio']:.1f}x), temp memory "
              f"{mem['forward']} / {mem['gradient']} bytes", flush=True)
    state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))
    path = write_result("cell_gradient", {"benchmark": "cell_gradient", "device": device_info(), "dtype": args.dtype,
                                          "grid": list(r.geometry.grain_id.shape), "state_bytes": state_bytes,
                                          "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
