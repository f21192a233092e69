"""Derivatives through a coupled debonding cycle: forward vs reverse mode, and their cost
(issue #12 items 4e and 7).

The small cell of tests/test_cell.py (0.5 µm voxels, 19 × 19 × 16) with an interface
that damages during a 2C charge: a rollout of ``--steps`` steps (engine.solve.rollout),
interface solved every step. The derivatives of D_G_ave and of the cell voltage at the
last step with respect to σc, Gc and g0, by

* ``reverse``: jax.jacrev (a checkpointed scan, the three elastic CG solves of the
  interface step and their transposes);
* ``forward``: one compiled Jacobian-vector product (jax.jvp), called once per
  parameter — what engine.inverse.voltage_fit uses for ≤ a few free parameters;
* ``forward_f32``: the same in float32;
* ``forward_4_steps``: the same with half the steps (the scan body is compiled once, so
  the compile should not change, the run should halve);

each against central differences of the float64 forward model (relative step
``--fd-step``). For every option the JSON has the compile time (lower + compile, AOT)
and the run time of the whole Jacobian (3 parameters × 2 outputs). jax.jacfwd (vmap of
jvp) does not trace through the interface step in jax 0.10.2 ("at vmap out_axes[0], got
axis spec None but output was batched on axis 0"), hence the loop of jvps; the error is
recorded under ``jacfwd_vmap``.

    python benchmarks/debonding_gradient.py [--steps 8] [--fd-step 1e-3] [--modes forward,reverse,...]

Results: ``results/debonding_gradient_<device>.json``. Compile times on the 2-core CPU
depend on what else runs; the JSON records the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.engine.config.scenario import scenario_from_dict  # noqa: E402
from ssbx.engine.model.resolve import resolve_cell  # noqa: E402
from ssbx.engine.solve.cell_step import initial_state  # noqa: E402
from ssbx.engine.solve.rollout import rollout, step_budget  # noqa: E402

B = 0.02  # isotropic expansion per unit x
SCENARIO = {
    "run": {"name": "debonding_gradient", "dtype": "float64"},
    "particle": {"radius_m": 2e-6, "voxel_size_m": 5e-7, "n_grains": 6},
    "material": {"name": "NCM111", "x_initial": 0.95},
    "cell": {"enabled": True, "areal_capacity_mAh_cm2": 0.05, "separator_thickness_m": 2e-6},
    "mechanics": {"enabled": True, "electrolyte_material": "LLZO", "expansion": [B, B, B], "tol": 1e-10},
    "electrochemistry": {"time_step_s": 60.0, "interface_resistance_ohm_m2": 1e-3, "newton_tolerance_V": 1e-8,
                         "solver_rtol": 1e-10},
    "protocol": {"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 6 min"]},
    "interface": {"enabled": True, "strength_Pa": 60e6, "fracture_energy_J_m2": 0.05, "gap_decay_length_m": 2e-9,
                  "update_every_steps": 1},
}
NAMES = ("strength_Pa", "fracture_energy_J_m2", "gap_decay_length_m")
OUTPUTS = ("gap_mean_m", "voltage_V")
MODES = ("forward", "forward_f32", "forward_4_steps", "reverse")


def _problem(dtype, n):
    scenario = dict(SCENARIO, run=dict(SCENARIO["run"], dtype="float64" if dtype == jnp.float64 else "float32"))
    if dtype == jnp.float32:  # float32 cannot reach the float64 tolerances
        scenario["mechanics"] = dict(scenario["mechanics"], tol=1e-6)
        scenario["electrochemistry"] = dict(scenario["electrochemistry"], newton_tolerance_V=1e-6, solver_rtol=1e-6)
    r = resolve_cell(scenario_from_dict(scenario), dtype)
    state = initial_state(r.geometry, r.params, r.x_initial, dtype)
    budget = step_budget(r)

    def outputs(theta):
        deb = eqx.tree_at(lambda q: (q.cohesive.strength, q.cohesive.fracture_energy, q.gap_decay_length_m),
                          r.params.debonding, tuple(theta[i] for i in range(3)))
        params = eqx.tree_at(lambda q: q.debonding, r.params, deb)
        _, rec, valid = rollout(r.geometry, params, r.numerics, r.protocol, state, r.x_initial, n_steps=n,
                                max_substeps=budget, checkpoint_every=n)
        last = jnp.max(jnp.where(valid, jnp.arange(n), -1))
        return jnp.stack([rec[k][last] for k in OUTPUTS]), rec["damaged_area_fraction"][last]

    theta = jnp.asarray([SCENARIO["interface"][k] for k in NAMES], dtype)
    return outputs, theta


def _timed_compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def jacobian(mode, n_steps):
    """(J (2, 3) as float64, compile s, run s of the whole Jacobian, damaged fraction)."""
    dtype = jnp.float32 if mode == "forward_f32" else jnp.float64
    n = n_steps // 2 if mode == "forward_4_steps" else n_steps
    outputs, theta = _problem(dtype, n)
    if mode == "reverse":
        compiled, t_compile = _timed_compile(jax.jacrev(lambda th: outputs(th)[0]), theta)
        t0 = time.perf_counter()
        jac = np.asarray(jax.block_until_ready(compiled(theta)), np.float64)
        t_run = time.perf_counter() - t0
        damaged = float(jax.jit(outputs)(theta)[1])
        return jac, t_compile, t_run, damaged, n
    compiled, t_compile = _timed_compile(lambda th, v: jax.jvp(outputs, (th,), (v,)), theta, theta)
    cols = []
    t0 = time.perf_counter()
    for k in range(3):
        (_, damaged), (col, _) = compiled(theta, jnp.zeros(3, dtype).at[k].set(1.0))
        cols.append(np.asarray(col, np.float64))
    t_run = time.perf_counter() - t0
    return np.stack(cols, axis=1), t_compile, t_run, float(damaged), n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--fd-step", type=float, default=1e-3, help="relative central-difference step")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    bad = sorted(set(modes) - set(MODES))
    if bad:
        ap.error(f"unknown modes {bad}; valid: {MODES}")
    jax.config.update("jax_enable_x64", True)
    load = os.getloadavg()[0]

    fd = {}
    for n in sorted({args.steps // 2 if m == "forward_4_steps" else args.steps for m in modes}):
        outputs, theta = _problem(jnp.float64, n)
        forward, t_forward = _timed_compile(lambda th, f=outputs: f(th)[0], theta)
        t0 = time.perf_counter()
        value = np.asarray(forward(theta))
        t_run = time.perf_counter() - t0
        cols = []
        for i in range(3):
            step = np.zeros(3)
            step[i] = args.fd_step * float(theta[i])
            cols.append((np.asarray(forward(theta + step)) - np.asarray(forward(theta - step))) / (2 * step[i]))
        fd[n] = {"jacobian": np.stack(cols, axis=1), "value": value, "forward_compile_s": t_forward,
                 "forward_run_s": t_run}
        print(f"{n} steps: forward model compile {t_forward:.1f} s, run {t_run:.2f} s; "
              f"D_G_ave {value[0]:.4e} m, V {value[1]:.6f} V", flush=True)

    options = []
    for mode in modes:
        jac, t_compile, t_run, damaged, n = jacobian(mode, args.steps)
        ref = fd[n]["jacobian"]
        rel = np.abs(jac - ref) / np.maximum(np.abs(ref), 1e-300)
        rows = [{"parameter": p, "output": o, "derivative": float(jac[j, i]), "central_difference": float(ref[j, i]),
                 "relative_difference": float(rel[j, i])} for i, p in enumerate(NAMES) for j, o in enumerate(OUTPUTS)]
        options.append({"mode": mode, "steps": n, "dtype": "float32" if mode == "forward_f32" else "float64",
                        "jacobian_compile_s": t_compile, "jacobian_run_s": t_run,
                        "damaged_area_fraction_last": damaged, "max_relative_difference": float(rel.max()),
                        "derivatives": rows})
        print(f"{mode:16s} {n} steps: compile {t_compile:7.1f} s  run {t_run:6.2f} s  "
              f"max rel. diff. vs central {rel.max():.1e}  (damaged {damaged:.2f})", flush=True)

    jacfwd_error = None
    if "forward" in modes:
        outputs, theta = _problem(jnp.float64, 2)
        try:
            jax.jit(jax.jacfwd(lambda th: outputs(th)[0])).lower(theta)
        except ValueError as e:  # vmap of the interface step's jvp
            jacfwd_error = str(e).splitlines()[0]
    payload = {
        "device": device_info(), "scenario": SCENARIO, "steps": args.steps, "fd_relative_step": args.fd_step,
        "load_average_at_start": load,
        "forward_model": {str(n): {"compile_s": v["forward_compile_s"], "run_s": v["forward_run_s"],
                                   "gap_mean_m_last": float(v["value"][0]), "voltage_V_last": float(v["value"][1])}
                          for n, v in fd.items()},
        "options": options, "jacfwd_vmap": jacfwd_error or "traced",
    }
    print(write_result("debonding_gradient" + args.tag, payload))


if __name__ == "__main__":
    main()
