"""Cost of the inverse-microstructure gradients against the scalar fit's (issue #16 item 5).

Run:  python benchmarks/inverse_cost.py [--n 32 64] [--repeats 3]

One synthetic particle per size (NCM622 defaults, 20 Voronoi grains, 0.1 µm voxels, an
n³ box, 10C delithiation; projections along z at 20, 40, 60 s) and three losses of the
same rollout:

* ``scalar`` — the SOC-map fit of D1 and D3 (engine.inverse.fitting.FitProblem), the
  existing fitting gradient;
* ``orientations`` — every grain's c axis + D1 (engine.inverse.orientations);
* ``reactive`` — every surface grain's contact weight (engine.inverse.reactive_contact).

Per loss: one forward evaluation and one value-and-gradient (best of ``--repeats`` warm
calls), their ratio (the gradient's cost in forward runs), the gradient time relative to
the scalar fit's, and XLA's estimate of the gradient's temporary memory in units of one
float32 state (n³ · 4 B). One L-BFGS iteration costs one value-and-gradient plus its line
search (usually 1–2 more), so the gradient time is the per-iteration cost to compare.
Results go to benchmarks/results/inverse_cost_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, time_call, write_result  # noqa: E402

from ssbx.engine.config.scenario import Scenario  # noqa: E402
from ssbx.engine.inverse.fitting import FitProblem, forward_setup, synthetic_projection_maps  # noqa: E402
from ssbx.engine.inverse.orientations import OrientationProblem, synthetic_orientation_maps  # noqa: E402
from ssbx.engine.inverse.parameters import FreeParameter  # noqa: E402
from ssbx.engine.inverse.reactive_contact import (ContactProblem, contact_setup_from_scenario,  # noqa: E402
                                                  synthetic_contact_maps)
from ssbx.engine.observables.observation import ObservationOperator  # noqa: E402
from ssbx.kernels.c_axis import c_axis_of_quaternion  # noqa: E402

TIMES = [20.0, 40.0, 60.0]


def temp_bytes(fn, *args) -> int:
    try:
        return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return -1


def measure(name, loss, value_and_grad, u, repeats, state_bytes, reference=None):
    forward_s = time_call(loss, u, repeats=repeats)
    grad_s = time_call(value_and_grad, u, repeats=repeats)
    temp = temp_bytes(value_and_grad, u)
    row = {"loss": name, "n_unknowns": int(np.size(u)), "forward_s": forward_s, "gradient_s": grad_s,
           "gradient_over_forward": grad_s / forward_s, "gradient_temp_bytes": temp,
           "gradient_temp_states": temp / state_bytes if temp > 0 else None}
    if reference is not None:
        row["gradient_over_scalar_gradient"] = grad_s / reference
    print(f"  {name:13s} unknowns {row['n_unknowns']:4d}  forward {forward_s:7.3f} s  gradient {grad_s:7.3f} s "
          f"({row['gradient_over_forward']:.2f}× forward)  temp {row['gradient_temp_states'] or float('nan'):.1f} states",
          flush=True)
    return row


def case(n: int, repeats: int) -> dict:
    h = 1e-7
    scenario = Scenario().replace(
        particle={"radius_m": 0.45 * n * h, "voxel_size_m": h, "n_grains": 20, "seed": 3},
        protocol={"c_rate": 10.0},
    )
    operator = ObservationOperator("projection", beam_axis=2, min_thickness_voxels=2)
    state_bytes = n**3 * 4
    print(f"n = {n}", flush=True)

    d1, d3 = FreeParameter("D1", 5e-15, 1e-15, 5e-14), FreeParameter("D3", 1e-17, 1e-19, 1e-15)
    setup = forward_setup(scenario, TIMES, operator, [d1, d3])
    measured = synthetic_projection_maps(setup, {"D1": 8e-15}, noise_std=1e-3, seed=1)
    scalar = FitProblem(setup, measured, [d1, d3])
    rows = [measure("scalar", jax.jit(scalar._loss_impl), jax.jit(jax.value_and_grad(scalar._loss_impl)),
                    scalar.u0, repeats, state_bytes)]
    reference = rows[0]["gradient_s"]

    setup_o = forward_setup(scenario, TIMES, operator, [d1])
    truth = np.asarray(c_axis_of_quaternion(setup_o.base.transport.orientations), np.float64)
    maps = synthetic_orientation_maps(setup_o, truth, 8e-15, beam_axes=(2,), noise_std=1e-3, seed=1)
    orient = OrientationProblem(setup_o, maps, d1)
    u = orient.pack(np.roll(truth, 1, axis=0), 5e-15)
    rows.append(measure("orientations", jax.jit(orient._loss_impl), orient._value_and_grad, u, repeats,
                        state_bytes, reference))

    contact = contact_setup_from_scenario(scenario, TIMES, [operator])
    reactive = (np.arange(contact.n_surface) % 3) != 0
    cmaps = synthetic_contact_maps(contact, reactive, noise_std=1e-3, seed=1)
    problem = ContactProblem(contact, cmaps)
    s0 = jnp.zeros(contact.n_surface, contact.x0.dtype)
    objective = jax.jit(lambda s: problem.objective(s, 0.0))
    rows.append(measure("reactive", objective, jax.jit(jax.value_and_grad(lambda s: problem.objective(s, 0.0))),
                        s0, repeats, state_bytes, reference))
    return {"n": n, "grid": [n, n, n], "n_steps": setup.n_steps, "n_grains": int(orient.n_grains),
            "n_surface_grains": int(contact.n_surface), "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cases = []
    for n in args.n:  # written after every size, so that a run cut short keeps what it measured
        cases.append(case(n, args.repeats))
        path = write_result("inverse_cost", {"benchmark": "inverse_cost", "device": device_info(),
                                             "times_s": TIMES, "cases": cases})
    print(path)


if __name__ == "__main__":
    main()
