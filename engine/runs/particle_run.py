"""Run a scenario: config -> microstructure -> model -> checkpointed scan -> HDF5.

The time line is split into ``n_snapshots − 1`` equal intervals, each made of chunks of
``checkpoint_every`` explicit steps (one compiled scan, reused for every chunk). The
time step is the largest one ≤ the stability limit (and ≤ ``max_time_step_s``) that
divides the run evenly, so snapshots fall exactly on their times. After each chunk
the recorded time series are appended to the file; after each interval a snapshot.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ssbx.engine.config.scenario import Scenario, jnp_dtype
from ssbx.engine.errors import SimulationDiverged
from ssbx.engine.io.run_file import RunWriter
from ssbx.engine.safe_files import exception_status
from ssbx.kernels.constants import FARADAY
from ssbx.engine.geometry.microstructure import build_microstructure
from ssbx.engine.physics.mechanics import StressSolver, scenario_stress_coupling, stress_free_x, stress_outputs
from ssbx.engine.model.particle import (
    STATUS_NOT_FINITE,
    STATUS_RUNNING,
    STATUS_TEXT,
    ParticleGeometry,
    TransportParams,
    galvanostatic_flux,
    initial_state,
    li_amount_mol,
    rollout,
)


@dataclasses.dataclass
class RunResult:
    path: Path
    status: str  # "completed", "stopped" or "diverged"
    message: str
    t_end_s: float
    n_steps: int
    dt_s: float




def time_grid(scenario: Scenario, max_diffusivity: float, voxel_size_m: float, ndim: int):
    """(dt_s, steps_per_interval, chunk) such that intervals hold whole chunks of steps."""
    from ssbx.kernels.diffusion import stable_time_step

    dt_max = stable_time_step(max_diffusivity, voxel_size_m, ndim, scenario.numerics.time_step_safety)
    if scenario.numerics.max_time_step_s is not None:
        dt_max = min(dt_max, scenario.numerics.max_time_step_s)
    n_intervals = scenario.output.n_snapshots - 1
    interval_s = scenario.protocol.duration_s / n_intervals
    chunk = scenario.numerics.checkpoint_every
    steps = math.ceil(interval_s / dt_max / chunk) * chunk
    return interval_s / steps, steps, chunk




def run_scenario(scenario: Scenario, out_path: str | Path, progress: bool = True) -> RunResult:
    """Simulate ``scenario`` and write the run file ``out_path``.

    A run that reaches x ∉ [0, 1] in an active voxel stops there (status "stopped", the
    file keeps every step up to the limit and a final snapshot). A run that produces
    NaN/Inf writes what it had, marks the file "diverged" and raises
    :class:`SimulationDiverged`.
    """
    dtype = jnp_dtype(scenario.run.dtype)
    micro = build_microstructure(scenario)
    geometry = ParticleGeometry.from_microstructure(micro, dtype)
    mat = scenario.material
    c_max = mat.resolved_c_max()
    diffusivity = mat.resolved_diffusivity()
    volume = micro.active_volume_m3()
    area = float(geometry.reactive_area_m2)
    flux = galvanostatic_flux(scenario.protocol.c_rate, scenario.protocol.sign, c_max, volume, area)
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray(diffusivity, dtype),
        orientations=jnp.asarray(micro.orientations, dtype),
        flux_mol_m2_s=jnp.asarray(flux, dtype),
        c_max_mol_m3=jnp.asarray(c_max, dtype),
    )
    coupling = scenario_stress_coupling(scenario, micro, dtype)
    d_eff = max(diffusivity)
    if coupling is not None:  # stress-assisted transport: stable for D (1 + θ)
        d_eff *= 1 + float(coupling.local_theta(c_max))
    dt, steps_per_interval, chunk = time_grid(scenario, d_eff, micro.voxel_size_m, micro.ndim)
    n_intervals = scenario.output.n_snapshots - 1
    every = scenario.output.timeseries_every
    current_A = -FARADAY * flux * area  # positive on charge (delithiation), docs/physics.md §4
    # stress re-solved every `block` steps: the largest divisor of the chunk ≤ the request
    block = chunk
    if coupling is not None:
        block = max(b for b in range(1, chunk + 1)
                    if chunk % b == 0 and b <= scenario.mechanics.coupling_every_steps)

    advance = eqx.filter_jit(
        # forward only: adjoint="autodiff" keeps one grain id per voxel, no per-voxel tensors
        lambda g, p, x: rollout(g, p, x, chunk, dt, checkpoint_every=block, guard=True,
                                coupling=coupling, adjoint="autodiff")
    )

    x = initial_state(geometry, mat.x_initial, dtype)
    li0 = li_amount_mol(geometry, x, c_max)
    grain_id = np.asarray(micro.grain_id)
    active = grain_id >= 0

    stress_solver = None
    if scenario.mechanics.enabled:
        stress_solver = StressSolver.build(micro, scenario.mechanics, stress_free_x(scenario), dtype)

    def snapshot(writer, t_s, x_now):
        x_np = np.asarray(x_now, dtype=np.float64)
        counts = np.bincount(grain_id[active], minlength=micro.n_grains)
        grain_mean = np.bincount(grain_id[active], weights=x_np[active], minlength=micro.n_grains)
        fields = {"soc": np.where(active, x_np, np.nan)}
        stats = {"mean_soc": float(x_np[active].mean())}
        if stress_solver is not None and np.all(np.isfinite(x_np)):
            stress_fields, stress_stats = stress_outputs(stress_solver.solve(x_now), active)
            fields.update(stress_fields)
            stats.update(stress_stats)
        writer.append_snapshot(t_s, fields, {"mean_soc": grain_mean / np.maximum(counts, 1)}, stats)

    step_index = 0
    status, message = "completed", f"reached t = {scenario.protocol.duration_s:g} s"
    with RunWriter(out_path, scenario.to_json(), micro) as writer:
        writer.append_timeseries(_timeseries_rows(np.zeros(1), np.array([mat.x_initial]), li0, li0,
                                                  current_A, c_max, volume))
        snapshot(writer, 0.0, x)
        bar = _progress(steps_per_interval * n_intervals, progress, scenario.run.name)
        try:
            for interval in range(n_intervals):
                for _ in range(steps_per_interval // chunk):
                    x, per_step = advance(geometry, params, x)
                    status_steps = np.asarray(per_step["status"])
                    mean_x = np.asarray(per_step["mean_x"], dtype=np.float64)
                    taken = int(np.sum(status_steps == STATUS_RUNNING))
                    t = (step_index + 1 + np.arange(taken)) * dt
                    keep = ((step_index + 1 + np.arange(taken)) % every == 0) | (
                        np.arange(taken) == taken - 1
                    )
                    if keep.any():
                        writer.append_timeseries(
                            _timeseries_rows(t[keep], mean_x[:taken][keep], None, li0, current_A, c_max, volume)
                        )
                    step_index += taken
                    bar.update(taken)
                    if taken < chunk:
                        code = int(status_steps[taken])
                        t_stop = step_index * dt
                        snapshot(writer, t_stop, x)
                        if code == STATUS_NOT_FINITE:
                            status = "diverged"
                        else:
                            status = "stopped"
                        message = (
                            f"stopped at t = {t_stop:.6g} s (step {step_index}, snapshot interval "
                            f"{interval + 1}/{n_intervals}): {STATUS_TEXT[code]}; the file keeps "
                            "every step up to this point"
                        )
                        break
                if status != "completed":
                    break
                snapshot(writer, step_index * dt, x)
        except BaseException as err:  # the file must not say "completed" after a crash or Ctrl-C
            status, message = exception_status(err, step_index * dt)
            raise
        finally:
            bar.close()
            writer.set_status(status if status != "completed" else "completed", message)
    result = RunResult(Path(out_path), status, message, step_index * dt, step_index, dt)
    if status == "diverged":
        raise SimulationDiverged(message)
    return result


def _timeseries_rows(t_s, mean_x, li_mol, li0, current_A, c_max, volume):
    """Timeseries columns; M_Li from the mean of x (exact: active voxels share one volume)."""
    mean_x = np.asarray(mean_x, np.float64)
    li = c_max * volume * mean_x if li_mol is None else np.full_like(mean_x, li_mol)
    return {
        "t_s": np.asarray(t_s, np.float64),
        "mean_soc": mean_x,
        "li_mol": li,
        "current_A": np.full_like(mean_x, current_A),
        "charge_Ah": (li0 - li) * FARADAY / 3600.0,
    }


def _progress(total: int, enabled: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=name, unit="step", dynamic_ncols=True)
