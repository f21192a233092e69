"""Slab domain decomposition of the voxel stencils over several devices.

A 2D/3D grid is cut into equal slabs along array axis 0 and each device holds one
slab (``jax.sharding.Mesh`` with one named axis, ``jax.shard_map``). A stencil of
width one along axis 0 needs one plane of each neighbouring slab: before every
operator application the slab sends its first and last planes to its neighbours with
``lax.ppermute`` (the "halo exchange"), the unchanged single-device stencil is applied
to the halo-padded slab of n_local + 2 planes, and the two halo planes of the result
are dropped. Reductions (CG dot products, means) are local sums followed by
``lax.psum``. The decomposition is the classic one of Smith, Bjørstad & Gropp,
*Domain Decomposition* (Cambridge University Press, 1996), ch. 1, and of the
distributed-memory finite-difference codes reviewed there; JAX's collective
primitives are described in the ``jax.shard_map`` documentation.

Boundary conditions are those of the single-device kernels, so results agree to
float32 round-off (they are the same floating-point operations on the same numbers;
only the order of the global sums in CG differs):

* diffusion (:mod:`.diffusion`): zero flux at the grid boundary (``_shift`` pads with
  zeros and a padded voxel is not active). The exchange is therefore *open*: the first
  slab receives no lower halo and the last no upper halo (``ppermute`` fills zeros);
  the halo of the grain id is −1 there, i.e. "not active", which closes the faces
  exactly as the zero padding does.
* conduction (:mod:`.conduction`): ``jnp.roll`` with face conductances whose wrap face
  is present only for a periodic lateral axis. The exchange is a *ring* (the last slab
  sends to the first), and the face conductances carry the boundary condition.

The grid size along axis 0 must be a multiple of the number of devices.

The FFT-Galerkin elasticity solver gets a slab-decomposed real FFT
(:class:`SlabRFFT`, one ``lax.all_to_all`` per transform) for its preconditioner. Not
decomposed: the DST/DCT (FFT) and multigrid preconditioners of the conduction solver;
the sharded conduction solve offers Jacobi or none. Use and limits: docs/sharding.md.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import conduction as kcond
from . import diffusion as kdiff
from . import elasticity as kel

__all__ = [
    "SLAB",
    "SlabIRFFT",
    "SlabRFFT",
    "check_slab_shape",
    "halo_pad",
    "sharded_apply_operator",
    "sharded_diffusion_rate",
    "sharded_explicit_rollout",
    "sharded_solve_elasticity",
    "sharded_solve_potential",
    "slab_mesh",
    "slab_rfft_pair",
    "slab_sharding",
]

#: Default name of the mesh axis the slabs are distributed over.
SLAB = "slab"


def slab_mesh(n_devices=None, axis_name=SLAB, devices=None) -> Mesh:
    """A one-axis mesh over ``n_devices`` devices (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if n_devices is None:
        n_devices = len(devices)
    if not 1 <= n_devices <= len(devices):
        raise ValueError(f"n_devices = {n_devices}; valid range 1..{len(devices)} (devices present)")
    return Mesh(np.array(devices[:n_devices]), (axis_name,))


def check_slab_shape(shape, mesh: Mesh, axis_name=SLAB):
    """Raise ValueError unless axis 0 of ``shape`` splits into equal slabs of ≥ 1 plane."""
    n = mesh.shape[axis_name]
    if len(shape) not in (2, 3):
        raise ValueError(f"grid shape = {tuple(shape)}; valid: a 2D or 3D grid")
    if shape[0] % n:
        raise ValueError(
            f"grid shape[0] = {shape[0]} is not a multiple of the {n} devices of mesh axis "
            f"{axis_name!r}; valid: shape[0] = k·{n}"
        )


def slab_sharding(mesh: Mesh, axis_name=SLAB) -> NamedSharding:
    """Sharding that splits array axis 0 over ``axis_name`` (for ``jax.device_put``)."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def halo_pad(a, axis_name, n_shards, periodic):
    """Local slab (n, ...) -> (n + 2, ...) with the neighbours' boundary planes.

    Call inside ``shard_map``. Plane 0 of the result is the last plane of the slab
    below, plane n + 1 the first plane of the slab above. With ``periodic=False`` the
    first slab's lower halo and the last slab's upper halo are zeros (``ppermute``
    leaves a device that receives nothing with zeros).
    """
    up = [(i, i + 1) for i in range(n_shards - 1)]  # slab i's last plane -> lower halo of i+1
    down = [(i + 1, i) for i in range(n_shards - 1)]  # slab i+1's first plane -> upper halo of i
    if periodic:
        up.append((n_shards - 1, 0))
        down.append((0, n_shards - 1))
    last, first = a[-1:], a[:1]
    if up:
        lower = jax.lax.ppermute(last, axis_name, up)
        upper = jax.lax.ppermute(first, axis_name, down)
    else:  # one device, open boundary
        lower, upper = jnp.zeros_like(last), jnp.zeros_like(first)
    return jnp.concatenate([lower, a, upper], axis=0)


def _pad_grain_id(gid, axis_name, n):
    # ppermute fills zeros where nothing arrives; shift so that "nothing" reads −1 (inactive)
    return halo_pad(gid + 1, axis_name, n, periodic=False) - 1


def _pad_zero(a):
    z = jnp.zeros_like(a[:1])
    return jnp.concatenate([z, a, z], axis=0)


def _specs(axis_name):
    return PartitionSpec(axis_name), PartitionSpec()


def sharded_diffusion_rate(x, grain_id, component_table, voxel_size_m, mesh: Mesh, source_rate=None,
                           axis_name=SLAB):
    """:func:`.diffusion.diffusion_rate` (1/s) with the grid split into slabs on ``mesh``.

    Same arguments and result as the single-device kernel; ``x``, ``grain_id`` and
    ``source_rate`` are global arrays (any sharding; the result is slab-sharded).
    """
    check_slab_shape(x.shape, mesh, axis_name)
    n = mesh.shape[axis_name]
    slab, rep = _specs(axis_name)
    if source_rate is None:
        source_rate = jnp.zeros_like(x)

    def local(xl, gl, sl, table):
        rate = kdiff.diffusion_rate(halo_pad(xl, axis_name, n, False), _pad_grain_id(gl, axis_name, n),
                                    table, voxel_size_m, _pad_zero(sl))
        return rate[1:-1]

    return jax.shard_map(local, mesh=mesh, in_specs=(slab, slab, slab, rep), out_specs=slab)(
        x, grain_id, source_rate, component_table)


def sharded_explicit_rollout(x0, grain_id, component_table, voxel_size_m, dt_s, n_steps, mesh: Mesh,
                             source_rate=None, axis_name=SLAB, checkpoint_every=None, adjoint="symmetric"):
    """``n_steps`` forward-Euler steps of :func:`.diffusion.explicit_step` on slabs.

    The whole ``lax.scan`` runs inside one ``shard_map``: per step each device
    exchanges two planes of x and applies the single-device operator to its padded
    slab. The grain-id halo is exchanged once. Returns ``(x_final, mean_x)``: the
    final state (slab-sharded) and the (n_steps,) mean of x over active voxels after
    each step (a ``psum`` of the slab sums).

    Args: as :func:`.diffusion.explicit_step`; ``dt_s`` in s, ``n_steps`` a static int.
        ``checkpoint_every``: None (one scan) or a block length k dividing n_steps;
        each block of k steps is wrapped in ``jax.checkpoint`` so reverse mode stores
        n_steps / k slab states (as engine.model.particle.rollout does).
        ``adjoint``: "symmetric" (default) applies :func:`.diffusion.symmetric_operator`
        to the padded slab with the tensor components gathered once (its hand-written
        VJP uses the symmetry of the padded operator; reverse mode keeps only states,
        forward mode is not defined); "autodiff" applies
        :func:`.diffusion.explicit_step` (gathers every step, all transformations).
        The values are the same.
    """
    check_slab_shape(x0.shape, mesh, axis_name)
    k = n_steps if checkpoint_every is None else int(checkpoint_every)
    if k < 1 or n_steps % k:
        raise ValueError(f"checkpoint_every = {checkpoint_every}; valid: a divisor of n_steps = {n_steps}")
    if adjoint not in ("symmetric", "autodiff"):
        raise ValueError(f"adjoint = {adjoint!r}; valid: 'symmetric' or 'autodiff'")
    n = mesh.shape[axis_name]
    slab, rep = _specs(axis_name)
    if source_rate is None:
        source_rate = jnp.zeros_like(x0)

    def local(xl, gl, sl, table, dt):
        gpad = _pad_grain_id(gl, axis_name, n)
        active = gl >= 0
        n_active = jnp.maximum(jax.lax.psum(jnp.sum(active), axis_name), 1)
        if adjoint == "symmetric":
            comps = kdiff.voxel_components(table, gpad)
            active_pad = gpad >= 0
            source = jnp.where(active, sl, 0.0)

            def advance(x):
                rate = kdiff.symmetric_operator(halo_pad(x, axis_name, n, False), comps, active_pad,
                                                1.0 / voxel_size_m)
                return x + dt * (rate[1:-1] + source)
        else:
            spad = _pad_zero(sl)

            def advance(x):
                return kdiff.explicit_step(halo_pad(x, axis_name, n, False), dt, gpad, table, voxel_size_m,
                                           spad)[1:-1]

        def step(x, _):
            x = advance(x)
            mean = jax.lax.psum(jnp.sum(jnp.where(active, x, 0)), axis_name) / n_active
            return x, mean

        def block(x, _):
            return jax.lax.scan(step, x, None, length=k)

        if checkpoint_every is not None:
            block = jax.checkpoint(block)
        x, means = jax.lax.scan(block, xl, None, length=n_steps // k)
        return x, means.reshape(n_steps)

    return jax.shard_map(local, mesh=mesh, in_specs=(slab, slab, slab, rep, rep), out_specs=(slab, rep))(
        x0, grain_id, source_rate, component_table, jnp.asarray(dt_s, x0.dtype))


# ----------------------------------------------------------------------------------
# conduction: operator and PCG
# ----------------------------------------------------------------------------------


def _pad_faces(g, gb, axis_name, n):
    """Halo-padded face conductances: g[0] needs the face below the slab (ring)."""
    g0 = halo_pad(g[0], axis_name, n, periodic=True)
    return (g0,) + tuple(_pad_zero(ga) for ga in g[1:]), _pad_zero(gb)


def _local_matvec(xl, gpad, gbpad, axis_name, n):
    return kcond.apply_operator(halo_pad(xl, axis_name, n, periodic=True), gpad, gbpad)[1:-1]


def sharded_apply_operator(x, g, gb, mesh: Mesh, axis_name=SLAB):
    """:func:`.conduction.apply_operator` on slabs (ring halo; see module docstring).

    Args: as the single-device operator (global arrays, ``g`` a tuple per axis).
    """
    check_slab_shape(x.shape, mesh, axis_name)
    n = mesh.shape[axis_name]
    slab, _ = _specs(axis_name)

    def local(xl, gl, gbl):
        gpad, gbpad = _pad_faces(gl, gbl, axis_name, n)
        return _local_matvec(xl, gpad, gbpad, axis_name, n)

    return jax.shard_map(local, mesh=mesh, in_specs=(slab, (slab,) * len(g), slab), out_specs=slab)(
        x, tuple(g), gb)


def _sharded_pcg(b, x0, g, gb, identity, jacobi, rtol, atol, maxiter, mesh, axis_name):
    """PCG of conduction._pcg with the matvec on slabs and ``psum`` dot products."""
    n = mesh.shape[axis_name]
    slab, rep = _specs(axis_name)

    def local(bl, xl, gl, gbl, il):
        gpad, gbpad = _pad_faces(gl, gbl, axis_name, n)

        def dot(u, v):
            return jax.lax.psum(jnp.sum(u * v), axis_name)

        def matvec(v):
            return _local_matvec(v, gpad, gbpad, axis_name, n) + il * v

        if jacobi:
            d = kcond._diagonal(gpad, gbpad)[1:-1] + il
            dinv = 1.0 / jnp.where(d > 0, d, 1.0)
        else:
            dinv = jnp.ones_like(bl)

        bnorm = jnp.sqrt(dot(bl, bl))
        tol = jnp.maximum(rtol * bnorm, atol)
        r0 = bl - matvec(xl)
        z0 = dinv * r0

        def cond(s):
            return (s[5] > tol) & (s[6] < maxiter) & (bnorm > 0)

        def body(s):
            x, r, z, p, rz, _, k = s
            ap = matvec(p)
            pap = dot(p, ap)
            alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
            x = x + alpha * p
            r = r - alpha * ap
            z = dinv * r
            rz_new = dot(r, z)
            beta = jnp.where(rz != 0, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0)
            return x, r, z, z + beta * p, rz_new, jnp.sqrt(dot(r, r)), k + 1

        init = (xl, r0, z0, z0, dot(r0, z0), jnp.sqrt(dot(r0, r0)), jnp.array(0, jnp.int32))
        x, _, _, _, _, rn, k = jax.lax.while_loop(cond, body, init)
        x = jnp.where(bnorm > 0, x, jnp.zeros_like(x))
        rtrue = bl - matvec(x)
        rel = jnp.where(bnorm > 0, jnp.sqrt(dot(rtrue, rtrue)) / jnp.where(bnorm > 0, bnorm, 1.0), 0.0)
        return x, k, rel, (rn <= tol) | (bnorm == 0)

    return jax.shard_map(local, mesh=mesh, in_specs=(slab, slab, (slab,) * len(g), slab, slab),
                         out_specs=(slab, rep, rep, rep))(b, x0, tuple(g), gb, identity)


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "axis", "lo", "hi", "lateral",
                                             "maxiter", "preconditioner"))
def sharded_solve_potential(sigma, voxel_size_m, *, mesh: Mesh, axis_name=SLAB, axis=0, lo="dirichlet",
                            hi="dirichlet", value_lo=0.0, value_hi=0.0, lateral="noflux", source=None,
                            x0=None, rtol=1e-6, atol=0.0, maxiter=2000, preconditioner="jacobi"):
    """:func:`.conduction.solve_potential` with the PCG iterations on slabs.

    Same equation, discretisation, boundary conditions, scaling, stopping rule and
    implicit differentiation (``lax.custom_linear_solve``) as the single-device solver;
    the connectivity mask and the face conductances are set up by XLA's automatic
    partitioning of the same global expressions, the PCG loop runs in one
    ``shard_map`` (halo exchange per matvec, ``psum`` per dot product). Preconditioner:
    ``"jacobi"`` (default) or ``"none"``; the FFT and multigrid preconditioners are not
    decomposed. Returns a :class:`.conduction.PotentialSolution`.
    """
    sigma = jnp.asarray(sigma)
    dtype = jnp.promote_types(sigma.dtype, jnp.float32)
    sigma = sigma.astype(dtype)
    check_slab_shape(sigma.shape, mesh, axis_name)
    if preconditioner not in ("jacobi", "none"):
        raise ValueError(f"preconditioner = {preconditioner!r}; valid on slabs: 'jacobi' or 'none'")
    kcond._check_options(sigma.ndim, axis, lo, hi, lateral, "jacobi")
    shape = sigma.shape
    h = jnp.asarray(voxel_size_m, dtype)
    sigma = jax.lax.with_sharding_constraint(sigma, slab_sharding(mesh, axis_name))

    # set-up: the same expressions as conduction.solve_potential, on global arrays
    mask, mf, sig, g, gb, b, identity = kcond.scaled_system(sigma, h, axis, lo, hi, lateral, value_lo, value_hi,
                                                            source)

    def matvec(v):
        return sharded_apply_operator(v, g, gb, mesh, axis_name) + identity * v

    gs, gbs, ids = jax.lax.stop_gradient((g, gb, identity))
    xinit = jnp.zeros(shape, dtype) if x0 is None else jnp.asarray(x0, dtype) * mf
    xinit = jax.lax.stop_gradient(xinit)
    jacobi = preconditioner == "jacobi"

    def solve(_, rhs):
        x, k, rel, conv = _sharded_pcg(rhs, xinit, gs, gbs, ids, jacobi, rtol, atol, maxiter, mesh,
                                       axis_name)
        return x, (k, rel, conv)

    def transpose_solve(_, rhs):
        x, k, rel, conv = _sharded_pcg(rhs, jnp.zeros_like(rhs), gs, gbs, ids, jacobi, rtol, atol, maxiter,
                                       mesh, axis_name)
        return x, (k, rel, conv)

    phi, (iters, rel, conv) = jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve, symmetric=True,
                                                          has_aux=True)
    return kcond.PotentialSolution(phi * mf, iters, rel, conv, mask)


# ----------------------------------------------------------------------------------
# elasticity: slab-decomposed real FFT for the FFT-Galerkin preconditioner
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SlabRFFT:
    """Forward real FFT over the grid axes of a (c, *grid) field split along grid axis 0.

    The slab ("transpose") algorithm of distributed 3D FFTs (e.g. Pekurovsky, SIAM J.
    Sci. Comput. 34, C192 (2012), P3DFFT; the pure-JAX backend of jaxDecomp does the
    same with ``lax.all_to_all``): each device transforms the grid axes it holds
    completely (axes 2 and 1 in 3D, axis 1 in 2D), one ``lax.all_to_all`` re-splits
    the array along grid axis 1 instead of 0, and grid axis 0 is transformed last.
    The result equals ``jnp.fft.rfftn(r, axes=grid axes)`` and is left split along
    grid axis 1 (the preconditioner works on it in place). Needs ``shape[1]`` (3D) or
    ``shape[1] // 2 + 1`` (2D) to be a multiple of the device count. Hashable, so it
    can be a static argument of the jitted solver.
    """

    mesh: Mesh
    axis_name: str
    ndim: int

    def __call__(self, r):
        a, ndim = self.axis_name, self.ndim

        def local(rl):
            rh = jnp.fft.rfft(rl, axis=ndim)
            if ndim == 3:
                rh = jnp.fft.fft(rh, axis=2)
            rh = jax.lax.all_to_all(rh, a, split_axis=2, concat_axis=1, tiled=True)
            return jnp.fft.fft(rh, axis=1)

        return jax.shard_map(local, mesh=self.mesh, in_specs=PartitionSpec(None, a),
                             out_specs=PartitionSpec(None, None, a))(r)


@dataclasses.dataclass(frozen=True)
class SlabIRFFT:
    """Inverse of :class:`SlabRFFT` (= ``jnp.fft.irfftn(zh, s=shape, axes=grid axes)``);
    the result is split along grid axis 0 again."""

    mesh: Mesh
    axis_name: str
    shape: tuple

    def __call__(self, zh):
        a, ndim, n_last = self.axis_name, len(self.shape), self.shape[-1]

        def local(zl):
            z = jnp.fft.ifft(zl, axis=1)
            z = jax.lax.all_to_all(z, a, split_axis=1, concat_axis=2, tiled=True)
            if ndim == 3:
                z = jnp.fft.ifft(z, axis=2)
            return jnp.fft.irfft(z, n=n_last, axis=ndim)

        return jax.shard_map(local, mesh=self.mesh, in_specs=PartitionSpec(None, None, a),
                             out_specs=PartitionSpec(None, a))(zh)


def slab_rfft_pair(shape, mesh: Mesh, axis_name=SLAB):
    """(forward, inverse) slab-decomposed real FFT pair for a grid of ``shape``."""
    check_slab_shape(shape, mesh, axis_name)
    n = mesh.shape[axis_name]
    split = shape[1] if len(shape) == 3 else shape[1] // 2 + 1
    if split % n:
        what = "shape[1]" if len(shape) == 3 else "shape[1] // 2 + 1"
        raise ValueError(
            f"grid shape = {tuple(shape)}: {what} = {split} is not a multiple of the {n} devices; "
            f"the slab FFT re-splits the spectrum along grid axis 1 (valid: {what} = k·{n})"
        )
    return SlabRFFT(mesh, axis_name, len(shape)), SlabIRFFT(mesh, axis_name, tuple(shape))


def sharded_solve_elasticity(stiffness_table0, stiffness_table1, phase_index, x, *, mesh: Mesh,
                             axis_name=SLAB, **options):
    """:func:`.elasticity.solve_elasticity` with the fields split into slabs on ``mesh``.

    The fields (``phase_index``, ``x``, an ``eigenstrain_field``) are placed slab-wise
    along grid axis 0; the solver's real-space operators (periodic shifts, the
    per-voxel stiffness) are partitioned by XLA from that placement (a shift along
    axis 0 becomes a collective permute of one plane, the volume sums all-reduces) and
    the reference preconditioner uses :class:`SlabRFFT` / :class:`SlabIRFFT`, so no
    device ever holds a whole field. Same arguments (``options``) and result as the
    single-device solver; the result's fields come back split along grid axis 0.
    """
    shape = tuple(jnp.shape(phase_index))
    pair = slab_rfft_pair(shape, mesh, axis_name)
    grid = slab_sharding(mesh, axis_name)
    phase_index = jax.device_put(jnp.asarray(phase_index), grid)
    x = jax.device_put(jnp.asarray(x), grid)
    if options.get("eigenstrain_field") is not None:
        options["eigenstrain_field"] = jax.device_put(
            jnp.asarray(options["eigenstrain_field"]), NamedSharding(mesh, PartitionSpec(None, axis_name)))
    return kel.solve_elasticity(stiffness_table0, stiffness_table1, phase_index, x, transforms=pair, **options)
