"""Stress-assisted particle runs: warm-started stress solves against cold ones.

Run:  python benchmarks/coupled_particle_speed.py [--mid-chunks 2] [--repeats 2]
                                                   [--full-runs N [--baseline-pythonpath DIR]]

The built-in default particle (10 µm NCM622, 400 grains, 0.2 µm voxels, 1C) with
``mechanics.couple_diffusion = true``: the stress potential χ is solved every
``block`` steps (engine.model.particle.rollout). A particle run's chunk
(engine.solve.particle_step.advance_particle) now starts each of these CG solves from
the previous block's solution (``warm_stress=True``); before, every solve started from
zero. Reported:

* CG iterations of six consecutive block solves, cold and warm, at the start of the run
  and after ``--mid-chunks`` chunks (mid-run), and the largest difference of the warm
  and cold stresses relative to the largest stress (both stop at the same relative
  residual, kernels.elasticity.solve_elasticity's ``tol``);
* wall time of one chunk (``advance_particle``'s rollout, warm and cold, best of
  ``--repeats`` warm calls, alternating) at the mid-run state, and the largest difference
  of the chunk's final x between the two;
* with ``--full-runs N``: N times the whole ``ssbx run --set
  mechanics.couple_diffusion=true --no-png --quiet`` in a fresh subprocess, end to end
  (compilation included), with its status, steps and end time; with
  ``--baseline-pythonpath DIR`` alternating with the same run of another tree (e.g. the
  commit before the change: ``mkdir -p /tmp/base/ssbx && git archive <commit> engine
  kernels | tar -x -C /tmp/base/ssbx``, then ``--baseline-pythonpath /tmp/base``).

The machine is shared: the 1-minute load average is recorded. Results:
benchmarks/results/coupled_particle_speed_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.engine.config.scenario import Scenario  # noqa: E402
from ssbx.engine.model.particle import rollout  # noqa: E402
from ssbx.engine.runs import particle_run as pr  # noqa: E402
from ssbx.engine.solve.particle_step import particle_stencil  # noqa: E402

SCENARIO = Scenario().replace(mechanics={"couple_diffusion": True})


def _load():
    return round(os.getloadavg()[0], 2)


def consecutive_solves(run, x, n_blocks=6):
    """CG iterations of ``n_blocks`` consecutive block solves from ``x``, cold and warm."""
    c, p, g = run.coupling, run.params, run.geometry
    advance_block = jax.jit(lambda x: rollout(g, p, x, run.block, run.dt, checkpoint_every=run.block, guard=True,
                                              coupling=c, adjoint="autodiff")[0])
    solve = jax.jit(lambda x, guess: c.solve(p.orientations, x, initial_guess=guess))
    states = [x]
    for _ in range(n_blocks - 1):
        states.append(advance_block(states[-1]))
    cold, warm, rel = [], [], []
    guess = c.zero_guess(x.dtype)
    for xs in states:
        r_cold = solve(xs, c.zero_guess(x.dtype))
        r_warm = solve(xs, guess)
        guess = r_warm.cg_solution
        cold.append(int(r_cold.iterations))
        warm.append(int(r_warm.iterations))
        scale = float(jnp.max(jnp.abs(r_cold.stress)))
        diff = float(jnp.max(jnp.abs(r_warm.stress - r_cold.stress)))
        rel.append(diff / scale if scale > 0 else diff)  # the stress-free start: both zero
    return {"cold_iterations": cold, "warm_iterations": warm, "max_stress_difference_rel": max(rel)}


def chunk_times(run, state, repeats):
    c, p, g = run.coupling, run.params, run.geometry

    def chunk(warm):
        return jax.jit(lambda x: rollout(g, p, x, run.chunk, run.dt, checkpoint_every=run.block, guard=True,
                                         coupling=c, adjoint="autodiff", stencil=particle_stencil(c),
                                         warm_stress=warm)[0])

    fns = {"cold": chunk(False), "warm": chunk(True)}
    out = {k: jax.block_until_ready(f(state)) for k, f in fns.items()}
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(state))
            best[k] = min(best[k], time.perf_counter() - t0)
    active = np.asarray(g.grain_id) >= 0
    diff = float(np.max(np.abs(np.asarray(out["warm"]) - np.asarray(out["cold"]))[active]))
    return {"chunk_steps": run.chunk, "block_steps": run.block, "cold_s": best["cold"], "warm_s": best["warm"],
            "cold_over_warm": best["cold"] / best["warm"], "max_x_difference": diff}


def full_run(pythonpath: str | None) -> dict:
    """The coupled default run in a fresh process; wall time, status and steps."""
    import subprocess

    import h5py

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coupled.h5"
        load0 = _load()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ssbx.engine.cli", "run", "--set",
                               "mechanics.couple_diffusion=true", "--no-png", "--quiet", "--out", str(out)],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        row = {"tree": pythonpath or "this", "exit_code": proc.returncode, "wall_s": wall,
               "load_1min": [load0, _load()]}
        if out.exists():
            with h5py.File(out) as f:
                row.update(status=str(f.attrs.get("status")), message=str(f.attrs.get("message")),
                           rows=int(f["timeseries/t_s"].shape[0]), t_end_s=float(f["timeseries/t_s"][-1]))
        return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mid-chunks", type=int, default=2, help="chunks to run before the mid-run measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full-runs", type=int, default=0, help="time the whole coupled default run N times")
    parser.add_argument("--baseline-pythonpath", default=None,
                        help="also run the full runs with this PYTHONPATH (another tree), alternating")
    args = parser.parse_args(argv)
    run = pr._ParticleRun(SCENARIO)
    x = run.initial.x
    result = {"benchmark": "coupled_particle_speed", "device": device_info(), "load_1min_start": _load(),
              "grid": list(x.shape), "dt_s": run.dt, "total_steps": run.total_steps,
              "start": consecutive_solves(run, x)}
    advance = jax.jit(lambda x: rollout(run.geometry, run.params, x, run.chunk, run.dt, checkpoint_every=run.block,
                                        guard=True, coupling=run.coupling, adjoint="autodiff", warm_stress=True)[0])
    for _ in range(args.mid_chunks):
        x = advance(x)
    active = np.asarray(run.geometry.grain_id) >= 0
    result["mid_mean_x"] = float(np.asarray(x)[active].mean())
    result["mid"] = consecutive_solves(run, x)
    result["chunk"] = chunk_times(run, x, args.repeats)
    if args.full_runs:
        result["full_runs"] = []
        for _ in range(args.full_runs):
            for tree in ([None, args.baseline_pythonpath] if args.baseline_pythonpath else [None]):
                row = full_run(tree)
                result["full_runs"].append(row)
                print(f"full coupled run ({row['tree']}): {row['wall_s']:.1f} s, exit {row['exit_code']}, "
                      f"{row.get('status')} at t = {row.get('t_end_s')} s")
    result["load_1min_end"] = _load()
    for key in ("start", "mid"):
        r = result[key]
        print(f"{key}: CG cold {r['cold_iterations']} warm {r['warm_iterations']} "
              f"(stress diff {r['max_stress_difference_rel']:.1e} rel)")
    ch = result["chunk"]
    print(f"chunk of {ch['chunk_steps']} steps: cold {ch['cold_s']:.2f} s, warm {ch['warm_s']:.2f} s "
          f"({ch['cold_over_warm']:.2f}×), max |Δx| {ch['max_x_difference']:.1e}")
    print("wrote", write_result("coupled_particle_speed", result))


if __name__ == "__main__":
    main()
