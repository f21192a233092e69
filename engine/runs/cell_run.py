"""Host side of a cell run: resolve once, call the device loop per chunk, write the file.

The host touches device arrays once per chunk (:func:`~.loop.advance`): it reads the
chunk's records and the state's scalars in one transfer, appends the timeseries,
updates the progress bar, and, when a protocol step has ended or the run stopped,
reads the fields for a snapshot. Time, charge and M_Li are accumulated here in float64
from the per-step records (Δt, I, Σ(x − x_initial)), so a float32 run keeps them to
float64 round-off. The run file has the layout of engine/runs/host_cell.run_cell.

:func:`drive` runs one lane or several (a batched sweep, engine.runs.sweep): the
state and parameters then carry a leading lane axis, the device loop is vmapped, and
every lane has its own :class:`LaneFile`.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.runs.host_cell import CellResult, _write_cycle_summary
from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError, SimulationDiverged
from ssbx.engine.io.run_file import RunWriter
from ssbx.engine.physics.mechanics import StressSolver, stress_free_x, stress_outputs
from ssbx.engine.geometry.microstructure import SOLID_ELECTROLYTE
from ssbx.engine.safe_files import exception_status
from ssbx.engine.physics.interface import positive_gap, solve_debonding
from ssbx.engine.solve.cell_step import (DIVERGED_SOLVE, DIVERGED_X, FINISHED, RECORD_INTERFACE, RUNNING,
                                        STOP_MECHANICS, STOP_TIME_STEP, STOP_X_BOUNDS, cell_step,
                                        electronic_conductivity, initial_state)
from ssbx.engine.solve.loop import advance
from ssbx.engine.model.resolve import ResolvedCell, resolve_cell
from ssbx.engine.io.restart import check_same_geometry, load_checkpoint, resume_scenario, save_checkpoint
from ssbx.engine.runs.particle_output import ParticleOutput


def _face_area_grid(geometry) -> np.ndarray:
    """Total reactive face area of each voxel (m²), for the current density field."""
    total = np.zeros(int(np.prod(geometry.grain_id.shape)))
    for idx, area in zip(geometry.face_index, geometry.face_area_m2):
        np.add.at(total, np.asarray(idx), np.asarray(area, np.float64))
    return total.reshape(geometry.grain_id.shape)


def check_resolved(resolved: ResolvedCell) -> None:
    if resolved.geometry.surface_index.size == 0:
        raise ConfigError("cell: the particle has no reactive active | ion-conductor faces "
                          "(particle.reactive_fraction = 0?); a cell run needs at least one")


class LaneFile:
    """The run file of one lane and the host-side bookkeeping that goes with it."""

    def __init__(self, scenario: Scenario, resolved: ResolvedCell, out_path, attrs: dict | None = None,
                 writer: RunWriter | None = None):
        """``writer``: an existing run file reopened to resume it (its geometry and
        attributes are already written; :meth:`restore` sets the bookkeeping)."""
        self.resolved = resolved
        micro, par = resolved.micro, resolved.params
        self.active = micro.active
        self.n_active = int(self.active.sum())
        self.li_per_x = float(par.c_max_mol_m3) * micro.voxel_size_m**micro.ndim  # mol per unit x per voxel
        self.area_grid = _face_area_grid(resolved.geometry)
        self.conducting_s = np.asarray(par.phase_sigma_s)[micro.labels] > 0
        self.conducting_e = np.asarray(par.phase_sigma_e)[micro.labels] > 0
        self.path = Path(out_path)
        if writer is None:
            self.writer = RunWriter(out_path, scenario.to_json(), micro)
            geo = self.writer._file["geometry"]
            geo.attrs["cell_area_m2"] = resolved.info["cell_area_m2"]
            geo.attrs["capacity_1C_A"] = float(resolved.info["capacity_Ah"])
            for key, value in (attrs or {}).items():
                self.writer._file.attrs[key] = value
        else:
            self.writer = writer
        # composite cathodes: per-particle rows, correlations and TXM projections (particle_output.py)
        self.particles = ParticleOutput.attach(self.writer._file, resolved, fresh=writer is None)
        self.n_snapshots = 0
        self.t = 0.0
        self.charge_C = 0.0
        self.last_current = 0.0
        self.pointer = 0
        self.n_steps = 0
        self.status, self.message = "running", ""
        self.done = False
        self.stress = None
        self.debonding = resolved.params.debonding is not None
        mech = scenario.mechanics
        if mech.enabled:
            dtype = jnp.asarray(par.c_max_mol_m3).dtype
            self.stress = StressSolver.build(micro, mech, stress_free_x(scenario), dtype, cell=True)
            self.solid = np.asarray(self.stress.table0)[np.asarray(self.stress.phase_index), 0, 0] > 0
            self.electrolyte = micro.labels == SOLID_ELECTROLYTE

    def stress_outputs(self, x, kappa=None) -> tuple[dict, dict]:
        """Stress fields on every solid voxel of the cell and the statistics of the
        active phase (as particle runs write them) plus the electrolyte's extremes. With
        debonding (``kappa``: the cohesive history) the stress is that of the cell with
        its layers at that history, and the layers' gap and damage are added."""
        extra = {}
        if kappa is None:
            result = self.stress.solve(jnp.asarray(x))
        else:
            geo, par = self.resolved.geometry, self.resolved.params
            result = _interface_snapshot(geo.cohesive, par.debonding, par.orientations, jnp.asarray(x),
                                         jnp.asarray(kappa), geo.voxel_size_m)
            extra = self.interface_fields(result)
        fields, stats = stress_outputs(result, self.active, self.solid)
        fields.update(extra)
        if self.electrolyte.any():
            se = self.electrolyte
            stats["electrolyte_von_mises_max_Pa"] = float(np.nanmax(fields["von_mises_Pa"][se]))
            stats["electrolyte_hydrostatic_min_Pa"] = float(np.nanmin(fields["hydrostatic_Pa"][se]))
            stats["electrolyte_max_principal_max_Pa"] = float(np.nanmax(fields["max_principal_Pa"][se]))
        return fields, stats

    def interface_fields(self, result) -> dict:
        """Gap (⟨g_n⟩₊ of each layer, m) and damage on the layers' voxels, NaN elsewhere."""
        host = np.asarray(self.resolved.geometry.cohesive.layers.host)
        deb = self.resolved.params.debonding
        gap = np.asarray(positive_gap(deb, result.normal_opening), np.float64)
        return {"gap_m": np.where(host, gap, np.nan),
                "damage": np.where(host, np.asarray(result.damage, np.float64), np.nan)}

    def snapshot(self, fields: dict):
        """``fields``: NumPy x, phi_s, phi_e, voxel_current, v_ref (and sigma_s)."""
        xa = np.asarray(fields["x"], np.float64)
        area = self.area_grid
        out = {
            "soc": np.where(self.active, xa, np.nan),
            "phi_s_V": np.where(self.conducting_s, np.asarray(fields["phi_s"], np.float64) + float(fields["v_ref"]),
                                np.nan),
            "phi_e_V": np.where(self.conducting_e, np.asarray(fields["phi_e"]), np.nan),
            "interface_current_A_m2": np.where(area > 0, np.asarray(fields["voxel_current"])
                                               / np.where(area > 0, area, 1.0), np.nan),
        }
        if "sigma_s" in fields:
            out["sigma_s_S_m"] = np.where(self.conducting_s, np.asarray(fields["sigma_s"], np.float64), np.nan)
        stats = {"mean_soc": float(xa[self.active].mean())}
        if self.stress is not None and np.all(np.isfinite(xa[self.active])):
            stress_fields, stress_stats = self.stress_outputs(np.where(self.active, xa, 0.0), fields.get("kappa"))
            out.update(stress_fields)
            stats.update(stress_stats)
        self.writer.append_snapshot(self.t, out, {}, stats)
        if self.particles is not None:
            self.particles.row(self.t, xa, fields["voxel_current"], self.n_snapshots)
        self.n_snapshots += 1

    def bookkeeping(self) -> dict:
        """The host-side counters a resumed run starts from (engine.io.restart)."""
        return {"t_s": self.t, "charge_C": self.charge_C, "last_current_A": self.last_current,
                "pointer": self.pointer, "n_steps": self.n_steps, "n_rows": self.n_steps,
                "n_snapshots": self.n_snapshots}

    def restore(self, bookkeeping: dict):
        self.t, self.charge_C = float(bookkeeping["t_s"]), float(bookkeeping["charge_C"])
        self.last_current = float(bookkeeping["last_current_A"])
        self.pointer, self.n_steps = int(bookkeeping["pointer"]), int(bookkeeping["n_steps"])
        self.n_snapshots = int(bookkeeping["n_snapshots"])
        if self.particles is not None:
            self.particles.truncate(self.n_steps, self.n_snapshots)

    def checkpoint(self, state):
        """Write the lane's State and bookkeeping to the run file (once per chunk)."""
        if self.particles is not None:
            self.particles.mark(self.n_steps)
        save_checkpoint(self.writer._file, state, self.bookkeeping())

    def records(self, n: int, rec: dict):
        """Append the first ``n`` records of a chunk to the timeseries."""
        if not n:
            return
        dt = np.asarray(rec["dt_s"][:n], np.float64)
        current = np.asarray(rec["current_A"][:n], np.float64)
        t_rows = self.t + np.cumsum(dt)
        # the current of a record holds until the next one (it drove that step's diffusion)
        during = np.concatenate([[self.last_current], current[:-1]])
        charge_rows = self.charge_C + np.cumsum(during * dt)
        li = self.li_per_x * (self.n_active * self.resolved.x_initial + np.asarray(rec["dx_sum"][:n], np.float64))
        self.writer.append_timeseries({
            "t_s": t_rows, "voltage_V": rec["voltage_V"][:n], "current_A": current,
            "li_mol": li, "mean_soc": li / (self.li_per_x * self.n_active),
            "charge_Ah": charge_rows / 3600.0, "step_index": rec["step_index"][:n],
            "cycle_index": rec["cycle_index"][:n], "cg_iterations": rec["cg_iterations"][:n],
            "newton_iterations": rec["newton_iterations"][:n],
            "bv_residual": rec["bv_residual"][:n],
            **({name: rec[name][:n] for name in RECORD_INTERFACE} if self.debonding else {}),
        })
        self.t, self.charge_C = float(t_rows[-1]), float(charge_rows[-1])
        self.last_current = float(current[-1])
        self.n_steps += n

    def after_chunk(self, code: int, pointer: int, scalars: dict, read_fields) -> bool:
        """Status and snapshot after a chunk; ``read_fields()`` fetches the lane's
        fields. Returns True when the lane has finished (for whatever reason)."""
        where = self.resolved.describe(pointer)  # unchanged unless a protocol step ended
        if code in (DIVERGED_SOLVE, DIVERGED_X):
            self.status = "diverged"
            if code == DIVERGED_SOLVE:  # at the time the state had reached since the last record
                self.message = (f"{where} at t = {self.t + scalars['dt']:.6g} s: the potential solve gave "
                                f"V = {scalars['voltage']}, I = {scalars['current']} A (the current cannot be met)")
            else:
                self.message = f"{where} in the step from t = {self.t:.6g} s: x became NaN/Inf"
            self.close()
            return True
        fields = None
        if pointer != self.pointer or code != RUNNING:
            fields = read_fields()
            self.snapshot(fields)
        elif self.particles is not None and code == RUNNING:  # per-particle rows at every chunk end too
            got = read_fields()
            self.particles.row(self.t + scalars["dt"], got["x"], got["voxel_current"], -1)
        self.pointer = pointer
        if code == RUNNING:
            return False
        if code == FINISHED:
            self.status, self.message = "completed", "protocol finished"
        elif code == STOP_TIME_STEP:
            self.status = "stopped"
            self.message = (f"{where} at t = {self.t:.6g} s: an active voxel is about to empty or fill under the "
                            "local current (time step below 1e-3 of electrochemistry.time_step_s) before the "
                            "step's limit was reached")
        elif code == STOP_MECHANICS:
            self.status = "stopped"
            self.message = (f"{where} at t = {self.t:.6g} s: the interface solve did not converge (elasticity CG "
                            f"within mechanics.maxiter, or the open/closed set of the cohesive layers within "
                            "interface.max_active_set_iterations); the step was not taken, and the file keeps every "
                            "step so far")
        elif code == STOP_X_BOUNDS:
            xa = np.asarray(fields["x"])[self.active]
            self.status = "stopped"
            self.message = (f"{where} at t = {self.t:.6g} s: the next step would take the Li content out of "
                            f"[0, 1] (now min {xa.min():.3g}, max {xa.max():.3g}); it was not taken, and the file "
                            "keeps every step so far")
        else:  # pragma: no cover - every code is handled above
            self.status, self.message = "stopped", f"{where}: status code {code}"
        self.close()
        return True

    def close(self, status: str | None = None, message: str | None = None):
        if self.done:
            return
        if status is not None:
            self.status, self.message = status, message or ""
        self.writer.set_status(self.status, self.message)
        _write_cycle_summary(self.writer, current_holds_until_next=True)
        if self.particles is not None:
            self.particles.finish()
        self.writer.close()
        self.done = True

    def result(self) -> CellResult:
        return CellResult(self.path, self.status, self.message, self.t, self.n_steps)


def _lane(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def read_fields(geometry, params, state) -> dict:
    """The fields a snapshot writes, as NumPy arrays (one transfer)."""
    got = {"x": state.x, "phi_s": state.phi_s, "phi_e": state.phi_e, "voxel_current": state.voxel_current,
           "v_ref": state.v_ref}
    if params.active_sigma_x is not None:
        got["sigma_s"] = _sigma_of_x(geometry, params, state.x)
    if params.debonding is not None:
        got["kappa"] = state.kappa
    return jax.device_get(got)


def _interface_snapshot(cohesive, debonding, orientations, x, kappa, voxel_size):
    """Eager on purpose: the active-set passes call the jitted elasticity core, which
    compiles once (a jitted whole would compile three copies of the solve again)."""
    return solve_debonding(cohesive, debonding, orientations, x, kappa, voxel_size)


@eqx.filter_jit
def _sigma_of_x(geometry, params, x):
    return electronic_conductivity(geometry, params, x)


def drive(resolved: ResolvedCell, params, numerics, protocol, state, x_initial, lanes: list[LaneFile],
          chunk: int, step=cell_step, bar=None, batched: bool = False):
    """Run the device loop until every lane has finished, writing each lane's file.

    With ``batched`` the parameter, numerics, protocol and state pytrees and
    ``x_initial`` carry a leading lane axis (one entry per LaneFile) and the device
    loop is vmapped over it; lanes that finish early are frozen by the loop's
    condition while the others go on.
    """
    geo = resolved.geometry
    run = advance
    if batched:
        run = eqx.filter_vmap(lambda p, nm, pr, st, x0: advance(geo, p, nm, pr, st, x0, chunk, step))
    while not all(lane.done for lane in lanes):
        if batched:
            state, n, buffers = run(params, numerics, protocol, state, x_initial)
        else:
            state, n, buffers = run(geo, params, numerics, protocol, state, x_initial, chunk, step)
        # one transfer per chunk: the records and the state's scalars of every lane
        n, rec, code, pointer, volt, cur, dt = jax.device_get(
            (n, buffers, state.status, state.pointer, state.voltage, state.current, state.pending_dt_s))
        for i, lane in enumerate(lanes):
            if lane.done:
                continue
            pick = (lambda a: a[i]) if batched else (lambda a: a)
            lane_rec = {k: pick(v) for k, v in rec.items()}
            lane.records(int(pick(n)), lane_rec)
            if bar is not None:
                bar.update(int(pick(n)))

            def fields(i=i):
                if batched:
                    return read_fields(geo, _lane(params, i), _lane(state, i))
                return read_fields(geo, params, state)

            scalars = {"voltage": float(pick(volt)), "current": float(pick(cur)), "dt": float(pick(dt))}
            lane.after_chunk(int(pick(code)), int(pick(pointer)), scalars, fields)
            if not lane.done and not batched:
                lane.checkpoint(state)
                if bar is not None:
                    bar.set_postfix_str(resolved.step_texts[lane.pointer % len(resolved.step_texts)])
    return state


def run_cell_device(scenario: Scenario, out_path, progress: bool = True, dtype=jnp.float32,
                    chunk: int | None = None, step=cell_step) -> CellResult:
    """Cycle the cell of ``scenario`` through its protocol with the device-resident
    stepper and write the run file ``out_path`` (same layout as engine.runs.host_cell.run_cell).

    ``chunk``: accepted steps per device call (default ``numerics.chunk_steps``);
    ``step`` (static) the step function (tests pass a wrapped one to inject faults).
    A run whose potentials or Li fraction turn NaN/Inf writes what it had, marks the
    file "diverged" and raises :class:`SimulationDiverged`.
    """
    resolved = resolve_cell(scenario, dtype)
    check_resolved(resolved)
    state = initial_state(resolved.geometry, resolved.params, resolved.x_initial, dtype)
    lane = LaneFile(scenario, resolved, out_path)
    return _run_lane(scenario, resolved, lane, state, chunk, step, progress, first_snapshot=True)


def resume_cell_device(path, progress: bool = True, chunk: int | None = None, step=cell_step) -> CellResult:
    """Continue the killed (or failed) cell run of the run file ``path`` from the State
    of its last chunk (engine.io.restart), appending to the same file. On the same
    device and dtype the file ends up as an uninterrupted run's (bit for bit).

    Refused with a ConfigError naming why: a file of another ssbx version, one whose
    geometry the scenario no longer reproduces, one without a restart state, and a run
    that already ended (completed, stopped or diverged)."""
    path = Path(path)
    scenario, dtype = resume_scenario(path)
    if not scenario.cell.enabled:
        raise ConfigError(f"--resume {path}: a particle run; continue it with engine.runs.particle_run."
                          "resume_particle (ssbx run --resume picks the driver)")
    resolved = resolve_cell(scenario, dtype)
    check_resolved(resolved)
    check_same_geometry(path, resolved.micro)
    writer = RunWriter.reopen(path)
    try:
        template = initial_state(resolved.geometry, resolved.params, resolved.x_initial, dtype)
        state, bookkeeping = load_checkpoint(writer._file, template)
        writer.truncate(int(bookkeeping["n_rows"]), int(bookkeeping["n_snapshots"]))
        writer.set_status("running", "")
    except Exception:
        writer.close()
        raise
    lane = LaneFile(scenario, resolved, path, writer=writer)
    lane.restore(bookkeeping)
    return _run_lane(scenario, resolved, lane, state, chunk, step, progress, first_snapshot=False)


def _run_lane(scenario, resolved, lane, state, chunk, step, progress, first_snapshot) -> CellResult:
    from tqdm.auto import tqdm

    chunk = chunk or scenario.numerics.chunk_steps
    bar = tqdm(disable=not progress, desc=scenario.run.name, unit="step", dynamic_ncols=True,
               initial=lane.n_steps)
    bar.set_postfix_str(resolved.step_texts[lane.pointer % len(resolved.step_texts)])
    try:
        if first_snapshot:
            lane.snapshot(read_fields(resolved.geometry, resolved.params, state))
            lane.checkpoint(state)
        drive(resolved, resolved.params, resolved.numerics, resolved.protocol, state, resolved.x_initial, [lane],
              chunk, step, bar)
    except BaseException as err:  # Ctrl-C → "interrupted", any other exception → "failed", with its message
        bar.close()
        lane.close(*exception_status(err, getattr(lane, "t", None)))
        raise
    finally:
        bar.close()
        lane.close("failed" if not lane.done else None, "the run stopped on an exception" if not lane.done else None)
    if lane.status == "diverged":
        raise SimulationDiverged(lane.message)
    return lane.result()
