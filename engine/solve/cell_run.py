"""Host side of a cell run: resolve once, call the device loop per chunk, write the file.

The host touches device arrays once per chunk (:func:`~.loop.advance`): it reads the
chunk's records and the state's scalars in one transfer, appends the timeseries,
updates the progress bar, and, when a protocol step has ended or the run stopped,
reads the fields for a snapshot. Time, charge and M_Li are accumulated here in float64
from the per-step records (Δt, I, Σ(x − x_initial)), so a float32 run keeps them to
float64 round-off. The run file has the layout of engine/cell.run_cell.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ssbx.kernels.constants import FARADAY

from ..cell import CellResult, _write_cycle_summary
from ..config import Scenario
from ..errors import ConfigError, SimulationDiverged
from ..io import RunWriter
from .cell_step import (DIVERGED_SOLVE, DIVERGED_X, FINISHED, RUNNING, STOP_TIME_STEP, STOP_X_BOUNDS, cell_step,
                        electronic_conductivity, initial_state)
from .loop import advance
from .resolve import ResolvedCell, resolve_cell


def _face_area_grid(geometry) -> np.ndarray:
    """Total reactive face area of each voxel (m²), for the current density field."""
    total = np.zeros(int(np.prod(geometry.grain_id.shape)))
    for idx, area in zip(geometry.face_index, geometry.face_area_m2):
        np.add.at(total, np.asarray(idx), np.asarray(area, np.float64))
    return total.reshape(geometry.grain_id.shape)


def run_cell_device(scenario: Scenario, out_path, progress: bool = True, dtype=jnp.float32,
                    chunk: int | None = None, step=cell_step) -> CellResult:
    """Cycle the cell of ``scenario`` through its protocol with the device-resident
    stepper and write the run file ``out_path`` (same layout as engine.cell.run_cell).

    ``chunk``: accepted steps per device call (default ``numerics.chunk_steps``).
    A run whose potentials or Li fraction turn NaN/Inf writes what it had, marks the
    file "diverged" and raises :class:`SimulationDiverged`.
    """
    from tqdm.auto import tqdm

    resolved: ResolvedCell = resolve_cell(scenario, dtype)
    if resolved.geometry.surface_index.size == 0:
        raise ConfigError("cell: the particle has no reactive active | ion-conductor faces "
                          "(particle.reactive_fraction = 0?); a cell run needs at least one")
    geo, par, num, prot = resolved.geometry, resolved.params, resolved.numerics, resolved.protocol
    chunk = chunk or scenario.numerics.chunk_steps
    micro = resolved.micro
    active = micro.active
    h = micro.voxel_size_m
    n_active = int(active.sum())
    li_per_x = float(par.c_max_mol_m3) * h**micro.ndim  # mol per unit x per voxel
    x0 = resolved.x_initial
    one_c = float(resolved.info["capacity_Ah"])
    area_grid = _face_area_grid(geo)
    conducting_s = np.asarray(par.phase_sigma_s)[micro.labels] > 0
    conducting_e = np.asarray(par.phase_sigma_e)[micro.labels] > 0
    sigma_of_x = jax.jit(lambda x: electronic_conductivity(geo, par, x))

    state = initial_state(geo, par, x0, dtype)

    def snapshot(writer, t_s, st):
        x, phi_s, phi_e, cur, v_ref = jax.device_get((st.x, st.phi_s, st.phi_e, st.voxel_current, st.v_ref))
        xa = np.asarray(x, np.float64)
        fields = {
            "soc": np.where(active, xa, np.nan),
            "phi_s_V": np.where(conducting_s, np.asarray(phi_s, np.float64) + float(v_ref), np.nan),
            "phi_e_V": np.where(conducting_e, np.asarray(phi_e), np.nan),
            "interface_current_A_m2": np.where(area_grid > 0, np.asarray(cur) / np.where(area_grid > 0, area_grid, 1.0),
                                               np.nan),
        }
        if par.active_sigma_x is not None:
            fields["sigma_s_S_m"] = np.where(conducting_s, np.asarray(sigma_of_x(st.x), np.float64), np.nan)
        writer.append_snapshot(t_s, fields, {}, {"mean_soc": float(xa[active].mean())})

    t = 0.0
    charge_C = 0.0
    status, message = "completed", "protocol finished"
    bar = tqdm(disable=not progress, desc=scenario.run.name, unit="step", dynamic_ncols=True)
    with RunWriter(out_path, scenario.to_json(), micro) as writer:
        writer._file["geometry"].attrs["cell_area_m2"] = resolved.info["cell_area_m2"]
        writer._file["geometry"].attrs["capacity_1C_A"] = one_c
        snapshot(writer, 0.0, state)
        try:
            pointer = 0
            bar.set_postfix_str(prot.texts[0])
            while True:
                state, n, buffers = advance(geo, par, num, prot, state, x0, chunk, step)
                # one transfer per chunk: the records and the state's scalars
                n, rec, code, new_pointer, volt, cur, dt_last = jax.device_get(
                    (n, buffers, state.status, state.pointer, state.voltage, state.current, state.dt_s))
                n, code, new_pointer = int(n), int(code), int(new_pointer)
                if n:
                    dt = np.asarray(rec["dt_s"][:n], np.float64)
                    current = np.asarray(rec["current_A"][:n], np.float64)
                    t_rows = t + np.cumsum(dt)
                    charge_rows = charge_C + np.cumsum(current * dt)
                    li = li_per_x * (n_active * x0 + np.asarray(rec["dx_sum"][:n], np.float64))
                    writer.append_timeseries({
                        "t_s": t_rows, "voltage_V": rec["voltage_V"][:n], "current_A": current,
                        "li_mol": li, "mean_soc": li / (li_per_x * n_active),
                        "charge_Ah": charge_rows / 3600.0, "step_index": rec["step_index"][:n],
                        "cycle_index": rec["cycle_index"][:n], "cg_iterations": rec["cg_iterations"][:n],
                        "bv_residual": rec["bv_residual"][:n],
                    })
                    t, charge_C = float(t_rows[-1]), float(charge_rows[-1])
                    bar.update(n)
                where = prot.describe(new_pointer)  # unchanged unless a protocol step ended
                if code in (DIVERGED_SOLVE, DIVERGED_X):
                    if code == DIVERGED_SOLVE:
                        message = (f"{where} at t = {t:.6g} s: the potential solve gave V = {float(volt)}, "
                                   f"I = {float(cur)} A (the current cannot be met)")
                    else:
                        message = f"{where} at t = {t + float(dt_last):.6g} s: x became NaN/Inf"
                    status = "diverged"
                    break
                if code == STOP_TIME_STEP:
                    status = "stopped"
                    message = (f"{where} at t = {t:.6g} s: an active voxel is about to empty or fill under the "
                               "local current (time step below 1e-3 of electrochemistry.time_step_s) before "
                               "the step's limit was reached")
                elif code == STOP_X_BOUNDS:
                    xa = np.asarray(state.x)[active]
                    status = "stopped"
                    message = (f"{where} at t = {t:.6g} s: Li content left [0, 1] (min {xa.min():.3g}, "
                               f"max {xa.max():.3g}); the file keeps every step so far")
                if new_pointer != pointer or code != RUNNING:
                    snapshot(writer, t, state)
                    if code == RUNNING:
                        bar.set_postfix_str(prot.texts[new_pointer % prot.n_steps])
                if code != RUNNING:
                    if code != FINISHED and status == "completed":  # pragma: no cover - guarded above
                        status, message = "stopped", f"{where}: status code {code}"
                    break
                pointer = new_pointer
        finally:
            bar.close()
            writer.set_status(status, message)
            _write_cycle_summary(writer)
    if status == "diverged":
        raise SimulationDiverged(message)
    return CellResult(Path(out_path), status, message, t, int(state.n_taken))
