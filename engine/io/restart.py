"""The stepper's State in the run file, so a killed run can be resumed.

After every chunk of the device loop the host writes the whole :class:`~.cell_step.CellState`
(every grid and scalar, in the run's dtype) and its own bookkeeping (time, charge, the
protocol pointer, how many timeseries rows and snapshots the file held at that moment)
to the run file. Two slots, ``/restart/slot_0`` and ``/restart/slot_1``, are written
alternately and in place (the file does not grow), and the attribute
``/restart.attrs["valid_slot"]`` names the last one written completely; it is set only
after that slot's data has been flushed, so a run killed while writing a slot still has
the other one. Resuming (:func:`load_checkpoint`) reads the valid slot and the file is cut
back to the rows and snapshots it names, so rows written after the checkpoint are
written again, identically, by the resumed run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.config.scenario import Scenario, scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import _ssbx_version
from ssbx.engine.solve.cell_step import CellState

GROUP = "restart"
BOOKKEEPING = ("t_s", "charge_C", "last_current_A", "pointer", "n_steps", "n_rows", "n_snapshots")


def _state_fields(state: CellState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def save_checkpoint(file: h5py.File, state, bookkeeping: dict) -> None:
    """Write ``state`` (a CellState or engine.solve.particle_step.ParticleState; one
    device→host transfer) and ``bookkeeping`` into the slot
    not marked valid, flush, then mark it valid."""
    group = file.require_group(GROUP)
    slot = 1 - int(group.attrs.get("valid_slot", 1))
    target = group.require_group(f"slot_{slot}")
    for name, value in jax.device_get(_state_fields(state)).items():
        value = np.asarray(value)
        if name in target and target[name].shape == value.shape and target[name].dtype == value.dtype:
            target[name][...] = value
        else:
            if name in target:
                del target[name]
            target.create_dataset(name, data=value)
    for key in BOOKKEEPING:
        target.attrs[key] = bookkeeping[key]
    file.flush()
    group.attrs["valid_slot"] = slot
    file.flush()


def load_checkpoint(file: h5py.File, template):
    """The state of the valid slot, with the leaves, shapes and dtypes of ``template``
    (a fresh initial state of the same scenario), and the bookkeeping."""
    if GROUP not in file or "valid_slot" not in file[GROUP].attrs:
        raise ConfigError(f"{file.filename}: no restart state in this run file (it was written before its first "
                          "chunk ended, or by an ssbx without resume); run it again from the start")
    slot = file[GROUP][f"slot_{int(file[GROUP].attrs['valid_slot'])}"]
    values = {}
    for name, leaf in _state_fields(template).items():
        if name not in slot or slot[name].shape != leaf.shape or slot[name].dtype != leaf.dtype:
            raise ConfigError(f"{file.filename}: the restart state's {name!r} does not fit this scenario "
                              f"(expected {leaf.dtype} {tuple(leaf.shape)}); the file is from another scenario "
                              "or ssbx version")
        values[name] = jnp.asarray(slot[name][...])
    bookkeeping = {key: slot.attrs[key] for key in BOOKKEEPING}
    return dataclasses.replace(template, **values), bookkeeping


RESUMABLE = ("running", "failed", "interrupted")


def resume_scenario(path) -> tuple[Scenario, object]:
    """The scenario and dtype of a run file that can be resumed: it exists, is an ssbx
    run file written by this ssbx version, and did not end (status running, failed or
    interrupted). Runs of the legacy host cell loop cannot be resumed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--resume {path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            status = str(f.attrs.get("status", ""))
            written_by = str(f.attrs.get("ssbx_version", ""))
            config = json.loads(f["config"].attrs["json"])
    except (OSError, KeyError) as err:
        raise ConfigError(f"--resume {path}: not an ssbx run file ({err})") from None
    if written_by != _ssbx_version():
        raise ConfigError(f"--resume {path}: written by ssbx {written_by}, this is ssbx {_ssbx_version()}; "
                          "a run can only be resumed by the version that started it")
    if status not in RESUMABLE:
        raise ConfigError(f"--resume {path}: the run has status {status!r}, nothing to resume (only a run that "
                          f"was killed or failed, status {' / '.join(RESUMABLE)}, can be continued)")
    scenario = scenario_from_dict(config)
    if scenario.sweep.parameter:
        raise ConfigError(f"--resume {path}: the lanes of a [sweep] cannot be resumed; run the sweep again")
    if scenario.cell.enabled and scenario.numerics.cell_driver != "device":
        raise ConfigError(f"--resume {path}: runs of the legacy host cell loop (numerics.cell_driver = "
                          "'host') cannot be resumed")
    return scenario, jnp.float64 if scenario.run.dtype == "float64" else jnp.float32


def check_same_geometry(path, micro) -> None:
    """Refuse to resume a file whose stored labels and grain ids the scenario no longer
    reproduces (another ssbx version or a changed generator)."""
    with h5py.File(path, "r") as f:
        same = (np.array_equal(f["geometry/labels"][...], micro.labels)
                and np.array_equal(f["geometry/grain_id"][...], micro.grain_id))
    if not same:
        raise ConfigError(f"{path}: its scenario no longer gives the geometry stored in the file (another ssbx "
                          "version or a changed generator); it cannot be resumed")
