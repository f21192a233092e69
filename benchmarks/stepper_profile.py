"""Where one device cell step's time goes (S2 example, default 400 nm voxels, CPU).

Run:  python benchmarks/stepper_profile.py [--voxel-size 4e-7] [--steps 40]

From a state some steps into the 1C charge, it times (minimum of ``--repeats`` calls,
robust to the load of a shared machine): one step of the device loop
(engine.solve.loop.advance, per step over ``--steps``), the potential solve of a step
(engine.solve.cell_step.potentials: Newton × coupled linear solves), one coupled linear
solve (kernels.electrode.solve_coupled) with the two galvanostatic right-hand sides as
two CG loops (``fused=False``, the legacy host loop's kernel) and as one CG loop run
over both (``fused=True``, the device stepper), the diffusion sub-steps of a 30 s step
(cell_step.diffuse), one multigrid V-cycle, and the compilation time of the potential
solve with either linear solve. Results go to benchmarks/results/stepper_profile_<device>.json.
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

from ssbx.engine.config.scenario import load_scenario  # noqa: E402
from ssbx.engine.model.resolve import resolve_cell  # noqa: E402
from ssbx.engine.solve import cell_step as cs  # noqa: E402
from ssbx.engine.solve.loop import advance  # noqa: E402
from ssbx.kernels import conduction as kc  # noqa: E402
from ssbx.kernels.electrode import face_potential_drop, solve_coupled  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ncm111_llzo_single_particle.toml"


def _min_time(fn, *args, repeats=10):
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxel-size", type=float, default=4e-7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    scenario = load_scenario(EXAMPLE).replace(mechanics={"enabled": False},
                                              particle={"voxel_size_m": args.voxel_size})
    r = resolve_cell(scenario)
    geo, par, num, pro = r.geometry, r.params, r.numerics, r.protocol
    state = cs.initial_state(geo, par, r.x_initial)
    run = eqx.filter_jit(lambda st, n: advance(geo, par, num, pro, st, r.x_initial, n))
    state, _, _ = run(state, 10)  # past the start of the charge
    load = [os.getloadavg()[0]]
    t_advance = _min_time(lambda st: run(st, args.steps), state, repeats=max(2, args.repeats // 3))
    _, n, rec = run(state, args.steps)
    n = int(n)
    derived = cs.derive(geo, par, num)

    def pot(st):
        return cs.potentials(geo, par, num, derived, st.x, st.phi_s, st.phi_e, st.warm, st.v_ref, False,
                             par.one_c_A, par.one_c_A)

    t_pot = _min_time(eqx.filter_jit(pot), state, repeats=args.repeats)
    sol = eqx.filter_jit(pot)(state)
    nsub = int(np.ceil(float(num.time_step_s) / float(derived.dt_stable)))
    dif = eqx.filter_jit(lambda x, vc: cs.diffuse(geo, par, derived, x, vc, num.time_step_s, nsub))
    t_diffuse = _min_time(dif, state.x, sol.voxel_current, repeats=args.repeats)

    # one linearised coupled solve of the next step, both CG arrangements
    faces = geo.interface()
    sigma_s, sigma_e = cs.electronic_conductivity(geo, par, state.x), cs.ionic_conductivity(geo, par)
    inv = lambda s: jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)  # noqa: E731
    g, c, _ = cs._linearised_kinetics(geo, par, derived, state.x, inv(sigma_s), inv(sigma_e),
                                      face_potential_drop(state.phi_s, state.phi_e, faces), state.v_ref)
    solves, compiles, calls = {}, {}, {}
    for fused in (False, True):
        f = jax.jit(lambda g, c, w, fused=fused: solve_coupled(
            sigma_s, sigma_e, geo.voxel_size_m, faces, g, c, 0.0, current=par.one_c_A, warm_start=w,
            stack_axis=geo.stack_axis, rtol=num.rtol, maxiter=num.maxiter, preconditioner=num.preconditioner,
            fused=fused))
        t0 = time.perf_counter()
        f.lower(g, c, state.warm).compile()
        compiles[f"solve_coupled_fused_{fused}"] = time.perf_counter() - t0
        out = jax.block_until_ready(f(g, c, state.warm))
        calls[fused] = f
        solves[f"fused_{fused}"] = {"s": np.inf, "cg_iterations": int(out.iterations), "voltage": float(out.voltage)}
    for _ in range(args.repeats):  # interleaved, so that both see the same load
        for fused, f in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(g, c, state.warm))
            solves[f"fused_{fused}"]["s"] = min(solves[f"fused_{fused}"]["s"], time.perf_counter() - t0)
    gs = kc.face_conductances(sigma_s * geo.voxel_size_m, geo.stack_axis, "periodic")
    gb = jnp.ones_like(sigma_s) * 0.1
    vcycle = jax.jit(lambda gs, gb, r: kc._make_multigrid(gs, gb)(r))
    hierarchy = jax.jit(lambda gs, gb: kc._dense_inverse(*kc._build_hierarchy(gs, gb)[-1][:3]))
    t_vcycle = _min_time(vcycle, gs, gb, sigma_s, repeats=args.repeats) - _min_time(hierarchy, gs, gb,
                                                                                      repeats=args.repeats)
    load.append(os.getloadavg()[0])
    result = {
        "benchmark": "stepper_profile", "device": device_info(), "example": EXAMPLE.name,
        "voxel_size_m": args.voxel_size, "grid": list(geo.labels.shape), "load_1min": load,
        "step_s": t_advance / max(n, 1), "steps_timed": n,
        "newton_iterations_per_step": float(np.mean(np.asarray(rec["newton_iterations"])[:n])),
        "cg_iterations_per_step": float(np.mean(np.asarray(rec["cg_iterations"])[:n])),
        "potentials_s": t_pot, "diffusion_s": t_diffuse, "diffusion_substeps": nsub,
        "solve_coupled": solves, "compile_s": compiles, "vcycle_one_field_s": t_vcycle,
    }
    for key, value in result.items():
        if key not in ("device",):
            print(f"{key}: {value}")
    print(f"wrote {write_result('stepper_profile', result)}")


if __name__ == "__main__":
    main()
