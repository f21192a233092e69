"""Run a particle scenario: config -> microstructure -> model -> device chunks -> HDF5.

The time line is split into ``n_snapshots − 1`` equal intervals of whole blocks of
``checkpoint_every`` explicit steps. The time step is the largest one ≤ the stability
limit (and ≤ ``max_time_step_s``) that divides the run evenly, so snapshots fall
exactly on their times. The device advances the State (engine.solve.particle_step)
one chunk per call — the largest multiple of ``checkpoint_every`` ≤
``numerics.chunk_steps`` that divides an interval — and the host reads the chunk's
records once per call, appends the time series, writes a snapshot after each
interval and the State into the file's restart slots, so that ``ssbx run --resume``
can continue a killed run (:func:`resume_particle`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ssbx.engine.config.scenario import Scenario, jnp_dtype
from ssbx.engine.errors import SimulationDiverged
from ssbx.engine.io.restart import check_same_geometry, load_checkpoint, save_checkpoint
from ssbx.engine.io.run_file import RunWriter
from ssbx.engine.safe_files import exception_status
from ssbx.kernels.constants import FARADAY
from ssbx.engine.geometry.microstructure import build_microstructure
from ssbx.engine.physics.mechanics import StressSolver, scenario_stress_coupling, stress_free_x, stress_outputs
from ssbx.engine.model.particle import (
    STATUS_NOT_FINITE,
    STATUS_TEXT,
    ParticleGeometry,
    TransportParams,
    fused_stencil_coefficients,
    galvanostatic_flux,
    initial_state,
    li_amount_mol,
)
from ssbx.engine.solve.particle_step import ParticleState, advance_particle, particle_stencil, particle_state_at_start


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




class _ParticleRun:
    """One particle run: the resolved model, its time grid and the host-side counters
    that go with the run file (written after each chunk into ``/restart`` with the
    State, engine.io.restart)."""

    def __init__(self, scenario: Scenario):
        dtype = jnp_dtype(scenario.run.dtype)
        self.scenario, self.dtype = scenario, dtype
        micro = self.micro = build_microstructure(scenario)
        geometry = self.geometry = ParticleGeometry.from_microstructure(micro, dtype)
        mat = scenario.material
        c_max = self.c_max = mat.resolved_c_max()
        diffusivity = mat.resolved_diffusivity()
        volume = self.volume = micro.active_volume_m3()
        area = float(geometry.reactive_area_m2)
        flux = galvanostatic_flux(scenario.protocol.c_rate, scenario.protocol.sign, c_max, volume, area)
        self.params = TransportParams(
            diffusivity_m2_s=jnp.asarray(diffusivity, dtype),
            orientations=jnp.asarray(micro.orientations, dtype),
            flux_mol_m2_s=jnp.asarray(flux, dtype),
            c_max_mol_m3=jnp.asarray(c_max, dtype),
        )
        self.coupling = scenario_stress_coupling(scenario, micro, dtype)
        d_eff = max(diffusivity)
        if self.coupling is not None:  # stress-assisted transport: stable for D (1 + θ)
            d_eff *= 1 + float(self.coupling.local_theta(c_max))
        self.dt, self.steps_per_interval, block = time_grid(scenario, d_eff, micro.voxel_size_m, micro.ndim)
        self.n_intervals = scenario.output.n_snapshots - 1
        self.current_A = -FARADAY * flux * area  # positive on charge (delithiation), docs/physics.md §4
        # stress re-solved every `block` steps: the largest divisor of checkpoint_every ≤ the request
        self.block = block
        if self.coupling is not None:
            self.block = max(b for b in range(1, block + 1)
                             if block % b == 0 and b <= scenario.mechanics.coupling_every_steps)
        # one host call per chunk: the largest multiple of checkpoint_every that divides an
        # interval and is ≤ numerics.chunk_steps (same Δt and steps whatever the chunk)
        self.chunk = max(c for c in range(block, max(block, scenario.numerics.chunk_steps) + 1, block)
                         if self.steps_per_interval % c == 0)
        # the fused stencil's pair weights once per run, not once per chunk
        self.fused_weights = (fused_stencil_coefficients(geometry, self.params)
                              if particle_stencil(self.coupling) == "fused" else None)
        x0 = initial_state(geometry, mat.x_initial, dtype)
        self.li0 = li_amount_mol(geometry, x0, c_max)
        self.initial = particle_state_at_start(x0)
        self.grain_id = np.asarray(micro.grain_id)
        self.active = self.grain_id >= 0
        self.stress_solver = None
        if scenario.mechanics.enabled:
            self.stress_solver = StressSolver.build(micro, scenario.mechanics, stress_free_x(scenario), dtype)
            self.stress_solver.warm_up(dtype)  # compiles while the first chunks run
        self.writer = None
        self.n_steps = self.n_rows = self.n_snapshots = 0
        self.status, self.message, self.at_snapshot = "running", "", False

    @property
    def total_steps(self) -> int:
        return self.steps_per_interval * self.n_intervals

    def snapshot(self, t_s, x_now):
        micro, grain_id, active = self.micro, self.grain_id, self.active
        x_np = np.asarray(x_now, dtype=np.float64)
        counts = np.bincount(grain_id[active], minlength=micro.n_grains)
        grain_mean = np.bincount(grain_id[active], weights=x_np[active], minlength=micro.n_grains)
        fields = {"soc": np.where(active, x_np, np.nan)}
        stats = {"mean_soc": float(x_np[active].mean())}
        if self.stress_solver is not None and np.all(np.isfinite(x_np)):
            stress_fields, stress_stats = stress_outputs(self.stress_solver.solve(x_now), active)
            fields.update(stress_fields)
            stats.update(stress_stats)
        self.writer.append_snapshot(t_s, fields, {"mean_soc": grain_mean / np.maximum(counts, 1)}, stats)
        self.n_snapshots += 1

    def rows(self, t_s, mean_x, li_mol=None):
        self.writer.append_timeseries(_timeseries_rows(t_s, mean_x, li_mol, self.li0, self.current_A,
                                                       self.c_max, self.volume))
        self.n_rows += len(t_s)

    def checkpoint(self, state: ParticleState):
        """The State and the counters into the run file's restart slots (one transfer)."""
        t = self.n_steps * self.dt
        save_checkpoint(self.writer._file, state, {
            "t_s": t, "charge_C": self.current_A * t, "last_current_A": self.current_A,
            "pointer": self.n_steps // self.steps_per_interval, "n_steps": self.n_steps,
            "n_rows": self.n_rows, "n_snapshots": self.n_snapshots})

    def after_chunk(self, x, n_taken: int, status_steps: np.ndarray, mean_x: np.ndarray) -> bool:
        """Host side of one chunk: its rows (every ``timeseries_every``-th step and the
        last one), a snapshot at an interval's end or at a stop. Returns True when the
        run has ended (protocol time reached or a step refused); sets status/message."""
        dt, every = self.dt, self.scenario.output.timeseries_every
        taken = int(n_taken)
        index = self.n_steps + 1 + np.arange(taken)
        keep = (index % every == 0) | (np.arange(taken) == taken - 1)
        if keep.any():
            self.rows(index[keep] * dt, mean_x[:taken][keep])
        self.n_steps += taken
        if taken < self.chunk:
            code = int(status_steps[taken])
            t_stop = self.n_steps * dt
            self.snapshot(t_stop, x)
            self.status = "diverged" if code == STATUS_NOT_FINITE else "stopped"
            interval = self.n_steps // self.steps_per_interval
            self.message = (
                f"stopped at t = {t_stop:.6g} s (step {self.n_steps}, snapshot interval "
                f"{interval + 1}/{self.n_intervals}): {STATUS_TEXT[code]}; the file keeps "
                "every step up to this point"
            )
            return True
        self.at_snapshot = self.n_steps % self.steps_per_interval == 0
        if self.at_snapshot:
            self.snapshot(self.n_steps * dt, x)
        if self.n_steps >= self.total_steps:
            self.status, self.message = "completed", f"reached t = {self.scenario.protocol.duration_s:g} s"
            return True
        return False

    def close(self, status: str | None = None, message: str | None = None) -> RunResult:
        """Write the final status (``status``/``message`` override, e.g. after an
        exception) and close the file; the run's result."""
        if status is not None:
            self.status, self.message = status, message
        self.writer.set_status(self.status, self.message)
        self.writer.close()
        return RunResult(Path(self.writer.path), self.status, self.message, self.n_steps * self.dt, self.n_steps,
                         self.dt)

    def drive(self, state: ParticleState, progress: bool, checkpoint_wall_s: float) -> RunResult:
        """Advance chunk by chunk to the end of the protocol or a stop; the host reads
        the State's records once per chunk, writes rows, snapshots at interval ends and
        the State at most every ``checkpoint_wall_s`` seconds of wall time (and at
        every snapshot)."""
        bar = _progress(self.total_steps, progress, self.scenario.run.name)
        bar.update(self.n_steps)
        last_checkpoint = time.monotonic()
        done = self.n_steps >= self.total_steps
        failure = None
        try:
            while not done:
                state, n_taken, per_step = advance_particle(self.geometry, self.params, state, self.chunk, self.dt,
                                                            self.block, self.coupling, self.fused_weights)
                before = self.n_steps
                done = self.after_chunk(state.x, n_taken, np.asarray(per_step["status"]),
                                        np.asarray(per_step["mean_x"], dtype=np.float64))
                bar.update(self.n_steps - before)
                if not done and (self.at_snapshot or time.monotonic() - last_checkpoint >= checkpoint_wall_s):
                    self.checkpoint(state)
                    last_checkpoint = time.monotonic()
        except BaseException as err:  # the file must not say "completed" after a crash or Ctrl-C
            failure = exception_status(err, self.n_steps * self.dt)
            raise
        finally:
            bar.close()
            result = self.close(*(failure or (None, None)))
        if result.status == "diverged":
            raise SimulationDiverged(result.message)
        return result


CHECKPOINT_WALL_S = 30.0  # particle steps are cheap: the State goes to the file at most this often


def run_scenario(scenario: Scenario, out_path: str | Path, progress: bool = True,
                 checkpoint_wall_s: float = CHECKPOINT_WALL_S) -> RunResult:
    """Simulate ``scenario`` and write the run file ``out_path``.

    A run that reaches x ∉ [0, 1] in an active voxel stops there (status "stopped", the
    file keeps every step up to the limit and a final snapshot). A run that produces
    NaN/Inf writes what it had, marks the file "diverged" and raises
    :class:`SimulationDiverged`. The State is saved in the file at every snapshot and
    at most every ``checkpoint_wall_s`` s, so a killed run can be continued with
    :func:`resume_particle` (``ssbx run --resume``).
    """
    run = _ParticleRun(scenario)
    state = run.initial
    run.writer = RunWriter(out_path, scenario.to_json(), run.micro)
    try:
        run.rows(np.zeros(1), np.array([scenario.material.x_initial]), run.li0)
        run.snapshot(0.0, state.x)
        run.checkpoint(state)
    except BaseException as err:
        run.writer.set_status(*exception_status(err, 0.0))
        run.writer.close()
        raise
    return run.drive(state, progress, checkpoint_wall_s)


def resume_particle(path: str | Path, scenario: Scenario, progress: bool = True,
                    checkpoint_wall_s: float = CHECKPOINT_WALL_S) -> RunResult:
    """Continue the killed particle run of the run file ``path`` (its ``scenario``, from
    engine.runs.resume.resume_scenario) from the last State it saved; the rows and
    snapshots written after that State are cut and written again. On the same device
    and dtype the file ends up as an uninterrupted run's, bit for bit."""
    path = Path(path)
    run = _ParticleRun(scenario)
    check_same_geometry(path, run.micro)
    writer = RunWriter.reopen(path)
    try:
        state, bookkeeping = load_checkpoint(writer._file, run.initial)
        writer.truncate(int(bookkeeping["n_rows"]), int(bookkeeping["n_snapshots"]))
        writer.set_status("running", "")
    except BaseException:
        writer.close()
        raise
    run.writer = writer
    run.n_steps, run.n_rows = int(bookkeeping["n_steps"]), int(bookkeeping["n_rows"])
    run.n_snapshots = int(bookkeeping["n_snapshots"])
    return run.drive(state, progress, checkpoint_wall_s)


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
