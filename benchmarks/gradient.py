"""Cost of reverse-mode gradients through long rollouts: time and peak memory vs steps.

Run:  python benchmarks/gradient.py [--n 24] [--steps 64 256 1024 4096] [--time-unchecked-max 1024]

A polycrystalline particle fills an n³ box (NCM622 diffusivities, 1C delithiation).
The scalar L = mean over active voxels of (x_final − 0.5)² is differentiated with
respect to the principal diffusivities and the surface flux, as a fit does. Three
ways of storing the forward pass for reverse mode are compared:

* ``unchecked`` — a plain ``lax.scan`` of explicit steps: reverse mode keeps every
  step's residuals, memory O(n · S);
* ``fixed16`` — model.rollout with blocks of k = 16 steps under ``jax.checkpoint``
  (the engine's default): memory O((n/16 + 16) · S);
* ``auto`` — model.rollout with k = round(√(n/R)), R = 6 residual states per step
  (fitting.checkpoint_plan, what the fitting code uses): memory ≈ 2√(nR) · S;
* ``auto-autodiff`` — the same with ``adjoint="autodiff"``: JAX transposes every step
  of the reference operator (kernels.diffusion) instead of the fused pair stencil with
  its block adjoint by symmetry (kernels.diffusion_fused.symmetric_block) that the
  other checkpointed schemes use. Its forward is the reference forward that
  ``ssbx run`` uses (particle_step, adjoint="autodiff").

S = n³ · 4 B is one float32 state. Peak memory is XLA's compile-time estimate of the
temporary buffers (``jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes``),
which works on CPU; it is reported in bytes and in units of S. Time: best of
``--repeats`` warm calls (time_call) of the forward loss and of value_and_grad; the
ratio is the cost of a gradient in forward runs of the same path (target ≤ 3);
``gradient_over_reference_forward`` divides by the reference forward (the
auto-autodiff row's forward_s at the same number of steps). The gradient with respect
to the flux alone is timed too (no cotangent for the tensor components). Results go to
benchmarks/results/gradient_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_particle, device_info, time_call, write_result  # noqa: E402

from ssbx.engine.inverse.fitting import checkpoint_plan  # noqa: E402
from ssbx.engine.model.particle import TransportParams, component_table, rollout  # noqa: E402
from ssbx.kernels import diffusion as kdiff  # noqa: E402


def setup(n: int):
    h = 1e-7
    micro, geometry, params = benchmark_particle(n, max(4, n), h)
    x0 = jnp.where(geometry.grain_id >= 0, jnp.float32(0.95), jnp.float32(0.0))
    dt = kdiff.stable_time_step(5e-15, h, 3)
    return micro, geometry, params, x0, dt


def unchecked_final(geometry, params, x0, n_steps, dt):
    """x after n_steps by a plain scan (no checkpointing)."""
    table = component_table(params, geometry.ndim)
    source = kdiff.surface_flux_rate(params.flux_mol_m2_s, geometry.face_count, params.c_max_mol_m3,
                                     geometry.voxel_size_m)

    def step(x, _):
        return kdiff.explicit_step(x, dt, geometry.grain_id, table, geometry.voxel_size_m, source), None

    x, _ = jax.lax.scan(step, x0, None, length=n_steps)
    return x


def make_loss(scheme: str, geometry, x0, n_steps: int, dt: float):
    active = geometry.grain_id >= 0
    n_active = jnp.sum(active)

    def final(d, j, params):
        p = TransportParams(d, params.orientations, j, params.c_max_mol_m3)
        if scheme == "unchecked":
            return unchecked_final(geometry, p, x0, n_steps, dt)
        k = 16 if scheme == "fixed16" else checkpoint_plan(n_steps)[1]
        adjoint = "autodiff" if scheme == "auto-autodiff" else "symmetric"
        return rollout(geometry, p, x0, n_steps, dt, checkpoint_every=k, adjoint=adjoint)[0]

    def loss(d, j, params):
        x = final(d, j, params)
        return jnp.sum(jnp.where(active, (x - 0.5) ** 2, 0.0)) / n_active

    return loss


def temp_bytes(fn, *args) -> int:
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(analysis.temp_size_in_bytes) if analysis is not None else -1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="grid edge (voxels)")
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--time-unchecked-max", type=int, default=1024,
                        help="time the unchecked scan only up to this many steps (its memory grows as n)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--tag", default="", help="suffix of the results name (gradient<TAG>_<device>.json), "
                                                  "to keep runs at several grids apart")
    args = parser.parse_args(argv)
    info = device_info()
    micro, geometry, params, x0, dt = setup(args.n)
    state_bytes = x0.size * x0.dtype.itemsize
    d, j = params.diffusivity_m2_s, params.flux_mol_m2_s
    rows = []
    for n_steps in args.steps:
        for scheme in ("unchecked", "fixed16", "auto", "auto-autodiff"):
            steps = checkpoint_plan(n_steps)[0] if scheme.startswith("auto") else n_steps
            if scheme == "fixed16" and steps % 16:
                continue
            loss = make_loss(scheme, geometry, x0, steps, dt)
            grad = jax.value_and_grad(loss, argnums=(0, 1))
            row = {
                "scheme": scheme,
                "n_steps": steps,
                "checkpoint_every": None if scheme == "unchecked" else (16 if scheme == "fixed16" else checkpoint_plan(steps)[1]),
                "adjoint": "symmetric" if scheme in ("fixed16", "auto") else "autodiff",
                "forward_temp_bytes": temp_bytes(loss, d, j, params),
                "gradient_temp_bytes": temp_bytes(grad, d, j, params),
            }
            row["gradient_temp_states"] = row["gradient_temp_bytes"] / state_bytes
            if scheme != "unchecked" or steps <= args.time_unchecked_max:
                fwd = jax.jit(loss)
                g = jax.jit(grad)
                row["forward_s"] = time_call(fwd, d, j, params, repeats=args.repeats)
                row["gradient_s"] = time_call(g, d, j, params, repeats=args.repeats)
                row["gradient_over_forward"] = row["gradient_s"] / row["forward_s"]
                if scheme != "unchecked":
                    # w.r.t. the flux alone: no cotangent for the per-grain tensor table,
                    # whose gather inside every step transposes to a scatter-add per step
                    g_flux = jax.jit(jax.value_and_grad(loss, argnums=1))
                    row["gradient_flux_only_s"] = time_call(g_flux, d, j, params, repeats=args.repeats)
                    row["gradient_flux_only_over_forward"] = row["gradient_flux_only_s"] / row["forward_s"]
            rows.append(row)
            ratio = f"{row['gradient_over_forward']:.2f}×" if "gradient_over_forward" in row else "(not timed)"
            if "gradient_flux_only_over_forward" in row:
                ratio += f" (flux only {row['gradient_flux_only_over_forward']:.2f}×)"
            print(f"{scheme:13s} {steps:6d} steps: gradient temp {row['gradient_temp_bytes'] / 2**20:8.2f} MiB "
                  f"= {row['gradient_temp_states']:7.1f} states; gradient/forward {ratio}", flush=True)
    for row in rows:
        ref = [r for r in rows if r["scheme"] == "auto-autodiff" and r["n_steps"] == row["n_steps"] and "forward_s" in r]
        if ref and "gradient_s" in row and row["adjoint"] == "symmetric":
            row["gradient_over_reference_forward"] = row["gradient_s"] / ref[0]["forward_s"]
            print(f"{row['scheme']:13s} {row['n_steps']:6d} steps: gradient / reference forward "
                  f"{row['gradient_over_reference_forward']:.2f}×")
    payload = {
        "benchmark": "gradient",
        "device": info,
        "grid": [args.n] * 3,
        "active_voxels": int(micro.active.sum()),
        "state_bytes": state_bytes,
        "dtype": "float32",
        "dt_s": dt,
        "loss": "mean over active voxels of (x_final - 0.5)^2; gradient w.r.t. (D1, D2, D3) and flux",
        "memory_model": "temp bytes from XLA memory_analysis (compile-time estimate)",
        "note": args.note,
        "results": rows,
    }
    print("wrote", write_result(f"gradient{args.tag}", payload))


if __name__ == "__main__":
    main()
