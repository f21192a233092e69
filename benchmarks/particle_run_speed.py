"""Speed and memory of particle runs (``ssbx run`` on a particle scenario): the chunk step
on the fused pair stencil against the reference operator it replaced.

Run:  python benchmarks/particle_run_speed.py [--sizes 64 128] [--chunk 128] [--repeats 2]
                                              [--default-run] [--baseline-pythonpath DIR]

For each cubic grid n³ (a polycrystalline NCM622 particle filling the box, radius
n/2 − 2.5 voxels, 1C delithiation, benchmarks/common.benchmark_particle) it times one
chunk of ``--chunk`` guarded explicit steps, as engine.runs.particle_run calls it:

* ``fused``: advance_particle's rollout with ``stencil="fused"`` (what a particle run
  uses on a CPU; on a GPU it keeps the reference, see particle_step.particle_stencil;
  kernels.diffusion_fused, d² pair weights per voxel built once per
  chunk, one elementwise pass per step and one reduction for the guard);
* ``reference``: the same call with ``stencil="reference"`` (kernels.diffusion, the
  per-grain tensor gathered from the grain id every step), i.e. advance_particle
  before this change.

Best of ``--repeats`` after a compile call; steps/s = chunk / best seconds. Memory: XLA's
own estimate for the compiled chunk (``jit(...).lower(...).compile().memory_analysis()``:
arguments, outputs, temporaries), per voxel; for ``--memory-sizes`` (256³, 512³) from
abstract shapes, compiled but not run. With ``--default-run`` it also times
``ssbx run`` with no arguments (the built-in default scenario) in a subprocess, best of
``--repeats`` (and inside it the time in chunk calls and in snapshots), for this tree
and, with ``--baseline-pythonpath``, for another tree, e.g. the commit before the
change unpacked with ``git archive <commit> engine kernels | tar -x -C /tmp/base/ssbx``
(then ``--baseline-pythonpath /tmp/base``). The machine's load average (os.getloadavg) is
recorded before and after every measurement: on a shared 2-core CPU the numbers move
with it. Results go to benchmarks/results/particle_run_speed_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_particle, device_info, write_result  # noqa: E402

from ssbx.engine.model.particle import STATUS_RUNNING, rollout  # noqa: E402
from ssbx.engine.solve.particle_step import particle_state_at_start  # noqa: E402
from ssbx.kernels.diffusion import stable_time_step  # noqa: E402


def _load():
    return [round(v, 2) for v in os.getloadavg()]


@eqx.filter_jit
def _advance_with(geometry, params, state, chunk: int, dt_s: float, block: int, stencil: str):
    """advance_particle's rollout (guarded, adjoint="autodiff") on the given stencil,
    whatever advance_particle picks on this backend (engine.solve.particle_step.
    particle_stencil: the fused one only on CPUs)."""
    x, records = rollout(geometry, params, state.x, chunk, dt_s, checkpoint_every=block, guard=True,
                         adjoint="autodiff", stencil=stencil)
    n_taken = jnp.sum(records["status"] == STATUS_RUNNING).astype(jnp.int32)
    return x, n_taken, records


def _advance_reference(geometry, params, state, chunk: int, dt_s: float, block: int):
    """advance_particle before the change: the reference operator, guarded."""
    return _advance_with(geometry, params, state, chunk, dt_s, block, "reference")


def _advance_fused(geometry, params, state, chunk: int, dt_s: float, block: int):
    """The fused pair stencil, guarded (advance_particle on a CPU)."""
    return _advance_with(geometry, params, state, chunk, dt_s, block, "fused")


def _best(fn, repeats):
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _memory(fn, *args):
    stats = fn.lower(*args).compile().memory_analysis()
    if stats is None:
        return None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k: int(getattr(stats, k)) for k in keys if hasattr(stats, k)}


def bench_size(n: int, chunk: int, block: int, repeats: int, grains_per_64: int = 100) -> dict:
    h = 1e-7
    micro, geometry, params = benchmark_particle(n, max(1, grains_per_64 * (n // 64) ** 3), h)
    dt = stable_time_step(5e-15, h, 3, 0.9)
    x0 = jnp.where(geometry.grain_id >= 0, jnp.float32(0.95), jnp.float32(0.0))
    state = particle_state_at_start(x0)
    out = {"n": n, "voxels": n**3, "active_fraction": float(micro.active.mean()), "n_grains": micro.n_grains,
           "chunk_steps": chunk, "block": block}
    calls = {
        "fused": (jax.jit(lambda g, p, s: _advance_fused(g, p, s, chunk, dt, block)), ),
        "reference": (jax.jit(lambda g, p, s: _advance_reference(g, p, s, chunk, dt, block)), ),
    }
    results = {}
    for name, (fn,) in calls.items():
        load_before = _load()
        seconds = _best(lambda fn=fn: fn(geometry, params, state), repeats)
        x = fn(geometry, params, state)[0]
        results[name] = jnp.asarray(x.x if hasattr(x, "x") else x)
        memory = _memory(fn, geometry, params, state)
        out[name] = {
            "seconds_per_chunk": seconds,
            "steps_per_s": chunk / seconds,
            "ms_per_step": 1e3 * seconds / chunk,
            "xla_memory": memory,
            "xla_bytes_per_voxel": None if memory is None else
            (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"] + memory["temp_size_in_bytes"]
             - memory.get("alias_size_in_bytes", 0)) / n**3,
            "load_before": load_before,
            "load_after": _load(),
        }
        print(f"{n}³ {name:9s}: {out[name]['steps_per_s']:8.1f} steps/s ({out[name]['ms_per_step']:.2f} ms/step), "
              f"XLA memory {out[name]['xla_bytes_per_voxel']:.1f} B/voxel, load {load_before}", flush=True)
    out["speedup"] = out["fused"]["steps_per_s"] / out["reference"]["steps_per_s"]
    out["max_abs_dx_fused_vs_reference"] = float(jnp.max(jnp.abs(results["fused"] - results["reference"])))
    return out


def _profile_default_child():
    """In the child process: ``ssbx run`` (default scenario) with the chunk calls and the
    snapshots (stress solve + HDF5 write) timed; prints one ``PROFILE {json}`` line."""
    import json

    import ssbx.engine.runs.particle_run as pr
    from ssbx.engine.cli import main as cli_main

    acc = {"first_chunk_s": None, "later_chunks_s": 0.0, "chunks": 0, "snapshots_s": 0.0, "snapshots": 0}
    advance, snapshot = pr.advance_particle, pr._ParticleRun.snapshot

    def timed_advance(*a, **k):
        t0 = time.perf_counter()
        out = jax.block_until_ready(advance(*a, **k))
        dt = time.perf_counter() - t0
        if acc["first_chunk_s"] is None:
            acc["first_chunk_s"] = dt  # includes compilation
        else:
            acc["later_chunks_s"] += dt
        acc["chunks"] += 1
        return out

    def timed_snapshot(self, *a, **k):
        t0 = time.perf_counter()
        out = snapshot(self, *a, **k)
        acc["snapshots_s"] += time.perf_counter() - t0
        acc["snapshots"] += 1
        return out

    pr.advance_particle, pr._ParticleRun.snapshot = timed_advance, timed_snapshot
    out = sys.argv[sys.argv.index("--profile-default-child") + 1]
    t0 = time.perf_counter()
    cli_main(["run", "--out", out, "--no-png", "-q", "--overwrite"])
    acc["in_process_s"] = time.perf_counter() - t0
    print("PROFILE " + json.dumps(acc), flush=True)


def memory_only(n: int, chunk: int, block: int, n_grains: int = 1000) -> dict:
    """XLA's memory estimate of one chunk at n³ from abstract shapes (compiled, never run,
    nothing allocated): how the two paths scale to grids this machine cannot hold."""
    from ssbx.engine.model.particle import ParticleGeometry, TransportParams
    from ssbx.engine.solve.particle_step import ParticleState

    f32, i32 = jnp.float32, jnp.int32
    spec = jax.ShapeDtypeStruct
    geometry = ParticleGeometry(grain_id=spec((n, n, n), i32), face_count=spec((n, n, n), f32), voxel_size_m=1e-7)
    params = TransportParams(spec((3,), f32), spec((n_grains, 4), f32), spec((), f32), spec((), f32))
    state = ParticleState(x=spec((n, n, n), f32), n_steps=spec((), i32), status=spec((), i32))
    dt = stable_time_step(5e-15, 1e-7, 3, 0.9)
    out = {"n": n, "voxels": n**3, "chunk_steps": chunk, "block": block, "n_grains": n_grains}
    for name, fn in (("fused", jax.jit(lambda g, p, s: _advance_fused(g, p, s, chunk, dt, block))),
                     ("reference", jax.jit(lambda g, p, s: _advance_reference(g, p, s, chunk, dt, block)))):
        memory = _memory(fn, geometry, params, state)
        total = (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"] + memory["temp_size_in_bytes"]
                 - memory.get("alias_size_in_bytes", 0))
        out[name] = {"xla_memory": memory, "xla_bytes_per_voxel": total / n**3, "xla_total_GiB": total / 2**30}
        print(f"{n}³ {name:9s}: XLA memory {total / 2**30:.2f} GiB, {total / n**3:.1f} B/voxel (compiled only)",
              flush=True)
    return out


def default_run(pythonpath: str | None, repeats: int) -> dict:
    """``ssbx run`` (built-in default scenario) in a subprocess, best of ``repeats``: process
    wall time, and inside it the chunk calls (first one with compilation) and snapshots."""
    import json

    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            load_before = _load()
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--profile-default-child", f"{tmp}/default.h5"],
                                  env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            profile = json.loads(re.search(r"^PROFILE (.*)$", proc.stdout, re.M).group(1))
            runs.append({"process_wall_s": wall, **profile, "load_before": load_before, "load_after": _load()})
            print(f"ssbx run (PYTHONPATH={env.get('PYTHONPATH', '')}): {wall:.2f} s process; chunks "
                  f"{profile['first_chunk_s']:.2f} s first + {profile['later_chunks_s']:.2f} s, snapshots "
                  f"{profile['snapshots_s']:.2f} s; load {load_before}", flush=True)
    return {"pythonpath": env.get("PYTHONPATH", ""), "runs": runs,
            "best_process_wall_s": min(r["process_wall_s"] for r in runs)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--chunk", type=int, default=128, help="steps per chunk call (a multiple of --block)")
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[256, 512],
                        help="grids whose chunk is only compiled, for XLA's memory estimate")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--default-run", action="store_true", help="also time `ssbx run` with no arguments")
    parser.add_argument("--baseline-pythonpath", default=None,
                        help="PYTHONPATH of a baseline tree for the default-run comparison")
    args = parser.parse_args(argv)
    payload = {"device": device_info(), "uptime_before": _uptime(), "repeats": args.repeats,
               "sizes": [bench_size(n, args.chunk, args.block, args.repeats) for n in args.sizes],
               "memory_only": [memory_only(n, args.chunk, args.block) for n in args.memory_sizes]}
    if args.default_run:
        payload["default_run"] = {"this_tree": default_run(None, args.repeats)}
        if args.baseline_pythonpath:
            payload["default_run"]["baseline"] = default_run(args.baseline_pythonpath, args.repeats)
    payload["uptime_after"] = _uptime()
    print("wrote", write_result("particle_run_speed", payload))


def _uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average {_load()}"


if __name__ == "__main__":
    if "--profile-default-child" in sys.argv:
        _profile_default_child()
    else:
        main()
