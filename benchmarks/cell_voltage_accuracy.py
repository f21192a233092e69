"""Accuracy of the cell voltage against the linear solver's tolerance (S2 example).

Run:  python benchmarks/cell_voltage_accuracy.py [--voxel-size 1e-6 4e-7] [--steps 60]

Runs the first ``--steps`` steps of the S2 example's 1C charge with the device stepper
(engine.solve.loop.advance, mechanics off) at several solver settings and compares the
recorded cell voltage with a float64 run at ``electrochemistry.solver_rtol`` = 1e-11 and
``newton_tolerance_V`` = 1e-9 (converged in both the linear solve and Newton):
the largest |ΔV| of the first step (cold start) and of the later steps, and the CG
iterations per step (the cost). Results go to
benchmarks/results/cell_voltage_accuracy_<device>.json; docs/numerics.md ("Galvanostatic
control and the accuracy of V") quotes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.engine.config.scenario import load_scenario  # noqa: E402
from ssbx.engine.model.resolve import resolve_cell  # noqa: E402
from ssbx.engine.solve import cell_step as cs  # noqa: E402
from ssbx.engine.solve.loop import advance  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ncm111_llzo_single_particle.toml"
# (dtype, solver_rtol, Newton tolerance on the face drops in V; None: the scenario's);
# the first is the reference, converged in both the linear solve and Newton
SETTINGS = [("float64", 1e-11, 1e-9), ("float32", 1e-6, None), ("float64", 1e-6, None), ("float32", 1e-7, None)]


def voltages(scenario, dtype_name, rtol, newton_tolerance_V, steps):
    dtype = jnp.dtype(dtype_name).type
    r = resolve_cell(scenario.replace(run={"dtype": dtype_name}), dtype=dtype)
    numerics = dataclasses.replace(r.numerics, rtol=rtol)
    if newton_tolerance_V is not None:
        numerics = dataclasses.replace(numerics, newton_tolerance_V=jnp.asarray(newton_tolerance_V, dtype))
    state = cs.initial_state(r.geometry, r.params, r.x_initial, dtype=dtype)
    run = eqx.filter_jit(lambda st, n: advance(r.geometry, r.params, numerics, r.protocol, st, r.x_initial, n))
    _, n, rec = run(state, steps)
    n = int(n)
    return np.asarray(rec["voltage_V"], np.float64)[:n], np.asarray(rec["cg_iterations"])[:n]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxel-size", type=float, nargs="+", default=[1e-6, 4e-7])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    rows = []
    for h in args.voxel_size:
        scenario = load_scenario(EXAMPLE).replace(mechanics={"enabled": False}, particle={"voxel_size_m": h})
        reference = None
        for dtype_name, rtol, newton_tol in SETTINGS:
            v, cg = voltages(scenario, dtype_name, rtol, newton_tol, args.steps)
            if reference is None:
                reference = v
            m = min(len(v), len(reference))
            dv = np.abs(v[:m] - reference[:m])
            row = {"voxel_size_m": h, "dtype": dtype_name, "solver_rtol": rtol,
                   "newton_tolerance_V": newton_tol or scenario.electrochemistry.newton_tolerance_V, "steps": int(len(v)),
                   "cg_iterations_per_step": float(np.mean(cg)), "max_abs_dV_first_step_V": float(dv[0]),
                   "max_abs_dV_later_steps_V": float(np.max(dv[1:])) if m > 1 else 0.0}
            rows.append(row)
            print(row, flush=True)
    result = {"benchmark": "cell_voltage_accuracy", "device": device_info(), "example": EXAMPLE.name,
              "reference": "float64, solver_rtol 1e-11, newton_tolerance_V 1e-9", "load_1min": os.getloadavg()[0], "rows": rows}
    print(f"wrote {write_result('cell_voltage_accuracy', result)}")


if __name__ == "__main__":
    main()
