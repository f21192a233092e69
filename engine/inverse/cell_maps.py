"""SOC maps of a cell's active material: the map term of the cell fit.

The cell fit (:mod:`.voltage_fit`) compares the model with a measured V(t) and,
optionally, with measured maps of the Li fraction x = c/c_max of the active
particle(s) at a few times (TXM-XANES projections or 3D volumes). The maps are seen
through the same observation operator the particle fits use
(engine.observables.observation.ObservationOperator): a projection pixel reports the
thickness-weighted mean of x through the active material along the beam,

    P(p, t) = Σ_{i ∈ ray(p)} a_i x_i(t) / Σ_{i ∈ ray(p)} a_i ,

(a the active indicator of the cell grid, binned to the measured pixel), a volume
pixel the active-weighted block mean. The rollout records the map of every row (the
state whose potentials that row's solve found, i.e. the map at the row's time;
``observe`` of engine.solve.rollout.rollout), and the maps at the measured times are
linear interpolations in time between the rows, exactly as V(t) is
(:func:`at_times`). The map term of the misfit is

    L_map(θ) = ½ Σ_{k, p ∈ usable} ((P(p, t_k; θ) − P_k(p)) / σ_map)²

(σ_map the map noise, in units of x), summed over the pixels that are finite and
unmasked in the measurement and seen through at least ``min_thickness_voxels`` of
active material (ObservationOperator.mask).

Li conservation: the thickness image T(p) = Σ_{i ∈ ray(p)} a_i (voxels) weights the map
back to the particle's Li, Σ_p P(p) T(p) h³ = Σ_i a_i x_i h³ = ∫ x dV; the test of this
module checks it against the charge passed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.model.resolve import ResolvedCell
from ssbx.engine.observables.observation import ObservationOperator

#: record name of the map rows in the rollout's records
MAP_RECORD = "soc_map"


def cell_map_operator(resolved: ResolvedCell, maps: MeasuredMaps, shift_px=(), shift_method: str = "linear",
                      min_thickness_voxels: float = 1.0, min_active_fraction: float = 0.5) -> ObservationOperator:
    """The observation operator of measured ``maps`` on the cell's grid: its kind, beam
    axis and pixel factor (pixel_size_m / voxel size, an integer) from the measurement,
    the registration shift and reliability thresholds as given. ConfigError when the
    maps' image shape is not the one the cell's grid gives along that beam axis, or no
    usable pixel sees active material."""
    geometry = resolved.geometry
    operator = ObservationOperator(
        kind=maps.kind, beam_axis=maps.beam_axis if maps.beam_axis is not None else 2,
        factor=maps.pixel_factor(geometry.voxel_size_m), shift_px=tuple(shift_px), shift_method=shift_method,
        min_thickness_voxels=min_thickness_voxels, min_active_fraction=min_active_fraction)
    check_maps(resolved, operator, maps)
    return operator


def check_maps(resolved: ResolvedCell, operator: ObservationOperator, maps: MeasuredMaps) -> np.ndarray:
    """The usable pixels (bool, (n_times, *image)) of ``maps`` seen by ``operator`` on the
    cell: finite and unmasked in the measurement and seen through enough active
    material. ConfigError naming the field when the kind, beam axis, pixel size or
    image shape do not fit the cell, or no usable pixel is left."""
    geometry = resolved.geometry
    active = np.asarray(geometry.active)
    grid = active.shape
    if maps.kind != operator.kind:
        raise ConfigError(f"maps.kind = {maps.kind!r}: the model observes {operator.kind!r} maps")
    if maps.kind == "projection" and maps.beam_axis != operator.beam_axis:
        raise ConfigError(f"maps.beam_axis = {maps.beam_axis!r}: the model projects along axis "
                          f"{operator.beam_axis} (0, 1, 2 = x, y, z)")
    factor = maps.pixel_factor(geometry.voxel_size_m)
    if factor != operator.factor:
        raise ConfigError(f"maps.pixel_size_m = {maps.pixel_size_m!r} m is {factor} voxels; the model's pixel is "
                          f"{operator.factor} voxels of {geometry.voxel_size_m} m")
    expected = operator.image_shape(grid)
    if tuple(maps.image_shape) != tuple(expected):
        along = f" along beam axis {operator.beam_axis}" if operator.kind == "projection" else ""
        raise ConfigError(
            f"maps shape {tuple(maps.image_shape)} (from {maps.source}): the cell grid {tuple(grid)} seen{along} "
            f"at {operator.factor} voxel(s) per pixel gives {operator.kind} maps of shape {tuple(expected)}; "
            "valid: that shape (check pixel_size_m, beam_axis and the cell's geometry)")
    visible = operator.mask(active)
    if not visible.any():
        raise ConfigError(
            f"maps: no pixel of the {tuple(expected)} {operator.kind} maps sees active material thick enough "
            f"(min_thickness_voxels = {operator.min_thickness_voxels}, min_active_fraction = "
            f"{operator.min_active_fraction}); the cell has {int(active.sum())} active voxels; valid: a cell "
            "with active material in view")
    usable = maps.mask & visible[None]
    if not usable.any():
        raise ConfigError(f"maps: no pixel is both usable in {maps.source} and in front of active material")
    return usable


def observe_map(operator: ObservationOperator, active):
    """An ``observe`` function for engine.solve.rollout.rollout: the map of the state's
    Li fraction, {MAP_RECORD: operator(x, active)} (x dimensionless, (*image))."""
    active = jnp.asarray(active)

    def observe(state):
        return {MAP_RECORD: operator(state.x, jnp.asarray(active, state.x.dtype))}

    return observe


def at_times(t_query, t_rows, valid, values):
    """Rows ``values`` (n_rows, ...) recorded at ``t_rows`` (s; only the ``valid`` rows
    count), linearly interpolated at the times ``t_query`` (s): between the last valid
    row at or before t and the first valid row after it; held at the last valid row
    after the end (and at the first before the start). Rows that were not recorded
    (a replaced overshooting solve, the budget after the run ended) are skipped. Two
    valid rows at one time (a protocol step that ended: the next step's first solve)
    give the later one at that time. Differentiable in the values and the row times.
    """
    n = t_rows.shape[0]
    index = jnp.arange(n)
    tq = jnp.asarray(t_query, t_rows.dtype).reshape(-1)
    first = jnp.argmax(valid)
    before = valid[None, :] & (t_rows[None, :] <= tq[:, None])
    after = valid[None, :] & (t_rows[None, :] > tq[:, None])
    i0 = jnp.max(jnp.where(before, index[None, :], -1), axis=1)
    i0 = jnp.where(i0 < 0, first, i0)
    i1 = jnp.min(jnp.where(after, index[None, :], n), axis=1)
    i1 = jnp.where(i1 >= n, i0, i1)
    span = t_rows[i1] - t_rows[i0]
    inside = (i1 != i0) & (span > 0) & (tq >= t_rows[i0])
    w = jnp.where(inside, (tq - t_rows[i0]) / jnp.where(inside, span, 1.0), 0.0)
    w = w.reshape(w.shape + (1,) * (values.ndim - 1)).astype(values.dtype)
    out = (1 - w) * values[i0] + w * values[i1]
    return out.reshape(jnp.shape(t_query) + values.shape[1:])


def thickness_image(operator: ObservationOperator, active) -> np.ndarray:
    """Voxels of active material behind each pixel of ``operator``'s map (projection: the
    summed ray lengths of the pixel's rays, in voxels; volume: the active voxels of the
    pixel's block), without registration shift: Σ_p P(p) T(p) = Σ_i a_i x_i."""
    return operator.ray_sum(active)
