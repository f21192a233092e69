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

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.solve.cell_step import CellState

GROUP = "restart"
BOOKKEEPING = ("t_s", "charge_C", "last_current_A", "pointer", "n_steps", "n_rows", "n_snapshots")


def _state_fields(state: CellState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def save_checkpoint(file: h5py.File, state: CellState, bookkeeping: dict) -> None:
    """Write ``state`` (one device→host transfer) and ``bookkeeping`` into the slot
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


def load_checkpoint(file: h5py.File, template: CellState) -> tuple[CellState, dict]:
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
