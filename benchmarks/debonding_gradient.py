"""Gradients through a coupled debonding cycle vs central differences (issue #12 item 4e).

The small cell of tests/test_cell.py (0.5 µm voxels, 19 × 19 × 16) with an interface
that damages during a 2C charge: a float64 rollout of ``--steps`` steps
(engine.solve.rollout), interface solved every step. The derivatives of D_G_ave and of
the cell voltage at the last step with respect to σc, Gc and g0 by reverse mode
(jax.jacrev) against central differences (relative step ``--fd-step``).

Not a test: compiling the reverse pass of a rollout with the interface solve (three
copies of the elastic CG and their transposes inside a checkpointed scan) takes about
4–9 minutes on the 2-core CPU, beyond the suite's budget. The result is committed as
``results/debonding_gradient_<device>.json``.

    python benchmarks/debonding_gradient.py [--steps 8] [--fd-step 1e-4]
"""

from __future__ import annotations

import argparse
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--fd-step", type=float, default=1e-4, help="relative central-difference step")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    r = resolve_cell(scenario_from_dict(SCENARIO), jnp.float64)
    state = initial_state(r.geometry, r.params, r.x_initial, jnp.float64)
    budget, n = step_budget(r), args.steps

    def outputs(theta):
        deb = eqx.tree_at(lambda q: (q.cohesive.strength, q.cohesive.fracture_energy, q.gap_decay_length_m),
                          r.params.debonding, tuple(theta))
        params = eqx.tree_at(lambda q: q.debonding, r.params, deb)
        _, rec, valid = rollout(r.geometry, params, r.numerics, r.protocol, state, r.x_initial, n_steps=n,
                                max_substeps=budget, checkpoint_every=n)
        last = jnp.max(jnp.where(valid, jnp.arange(n), -1))
        return jnp.stack([rec["gap_mean_m"][last], rec["voltage_V"][last]]), rec

    theta = jnp.asarray([SCENARIO["interface"][k] for k in NAMES])
    forward = jax.jit(lambda th: outputs(th)[0])
    t0 = time.perf_counter()
    value, rec = jax.jit(outputs)(theta)
    t_forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    jac = np.asarray(jax.jit(jax.jacrev(lambda th: outputs(th)[0]))(theta))
    t_reverse = time.perf_counter() - t0
    rows = []
    for i, name in enumerate(NAMES):
        step = np.zeros(3)
        step[i] = args.fd_step * float(theta[i])
        fd = (np.asarray(forward(theta + step)) - np.asarray(forward(theta - step))) / (2 * step[i])
        for j, out in enumerate(("gap_mean_m", "voltage_V")):
            rel = abs(jac[j, i] - fd[j]) / max(abs(fd[j]), 1e-300)
            rows.append({"parameter": name, "output": out, "reverse_mode": float(jac[j, i]),
                         "central_difference": float(fd[j]), "relative_difference": float(rel)})
            print(f"d {out} / d {name}: reverse {jac[j, i]:.8e}  central {fd[j]:.8e}  rel {rel:.1e}")
    payload = {
        "device": device_info(), "scenario": SCENARIO, "steps": n, "fd_relative_step": args.fd_step,
        "damaged_area_fraction_last": float(np.asarray(rec["damaged_area_fraction"])[-1]),
        "gap_mean_m_last": float(value[0]), "voltage_V_last": float(value[1]),
        "forward_with_compile_s": t_forward, "jacrev_with_compile_s": t_reverse, "derivatives": rows,
    }
    print(write_result("debonding_gradient", payload))


if __name__ == "__main__":
    main()
