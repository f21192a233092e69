"""Particle rollout with the grid split into slabs over several devices.

:func:`sharded_rollout` is :func:`ssbx.engine.model.particle.rollout` (prescribed
surface flux, no stress coupling, no guard) on a one-axis device mesh: the voxel grid
is cut into equal slabs along array axis 0, each device advances its slab and
exchanges one plane with each neighbour per step (kernels/sharded.py). Values equal
the single-device rollout to float32 round-off and gradients with respect to
:class:`~ssbx.engine.model.particle.TransportParams` go through it (reverse mode
stores one slab state per checkpoint block). Use::

    from ssbx.kernels.sharded import slab_mesh
    mesh = slab_mesh()                     # all devices, e.g. 8 GPUs of one node
    x, per_step = sharded_rollout(geometry, params, x0, n_steps, dt_s, mesh)

docs/sharding.md gives the memory per voxel and the largest grids per device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ssbx.engine.errors import ConfigError
from ssbx.engine.model.particle import STATUS_RUNNING, ParticleGeometry, TransportParams, component_table
from ssbx.kernels import diffusion as kdiff
from ssbx.kernels import sharded as ksh


def check_mesh(shape, mesh, axis_name=ksh.SLAB):
    """ConfigError unless ``mesh`` has axis ``axis_name`` and shape[0] splits evenly over it."""
    if axis_name not in mesh.shape:
        raise ConfigError(f"mesh axes = {tuple(mesh.shape)}; valid: a mesh with axis {axis_name!r} "
                          "(ssbx.kernels.sharded.slab_mesh builds one)")
    n = mesh.shape[axis_name]
    if shape[0] % n:
        raise ConfigError(f"grid shape[0] = {shape[0]} with {n} devices: valid are grids whose first "
                          f"axis is a multiple of the device count (k·{n} voxels)")


def sharded_rollout(geometry: ParticleGeometry, params: TransportParams, x0: jax.Array, n_steps: int,
                    dt_s: float, mesh, checkpoint_every: int = 16, adjoint: str = "symmetric",
                    axis_name=ksh.SLAB):
    """Advance ``n_steps`` explicit steps on slabs; returns ``(x_final, per_step)``.

    Same physics and outputs as ``particle.rollout(..., guard=False, coupling=None)``:
    ``per_step`` holds (n_steps,) ``mean_x`` and ``status`` (always running).
    ``x_final`` comes back split along axis 0 over ``mesh``. ``adjoint`` as in
    particle.rollout: "symmetric" (hand-written VJP, tensor components gathered once;
    the cheap reverse mode) or "autodiff" (forward mode too, one int per voxel).
    """
    check_mesh(geometry.grain_id.shape, mesh, axis_name)
    if adjoint not in ("symmetric", "autodiff"):
        raise ConfigError(f"adjoint = {adjoint!r}; valid: 'symmetric' or 'autodiff'")
    if n_steps < 1 or checkpoint_every < 1 or n_steps % checkpoint_every:
        raise ConfigError(f"n_steps = {n_steps}, checkpoint_every = {checkpoint_every}: valid are "
                          "n_steps ≥ 1 a multiple of checkpoint_every ≥ 1")
    table = component_table(params, geometry.ndim)
    source = kdiff.surface_flux_rate(params.flux_mol_m2_s, geometry.face_count, params.c_max_mol_m3,
                                     geometry.voxel_size_m)
    x, mean_x = ksh.sharded_explicit_rollout(
        x0, geometry.grain_id, table, geometry.voxel_size_m, dt_s, n_steps, mesh, source_rate=source,
        axis_name=axis_name, checkpoint_every=checkpoint_every, adjoint=adjoint)
    status = jnp.full((n_steps,), STATUS_RUNNING, jnp.int32)
    return x, {"mean_x": mean_x, "status": status}
