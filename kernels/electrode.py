"""Coupled electronic and ionic potentials joined by linearised interface kinetics.

Unknowns on one voxel grid: φ_s in electron conductors (σ_s > 0) and φ_e in ion
conductors (σ_e > 0); a voxel may carry both (ECBD). Charge conservation
(docs/physics.md §3) with the interface current I_f of every active | ion-conductor face f
leaving the solid and entering the electrolyte:

    −∇·(σ_s∇φ_s) = −Σ_f I_f δ_a(f) / V,     −∇·(σ_e∇φ_e) = +Σ_f I_f δ_b(f) / V,

(a = the active voxel of face f, b = its ionic neighbour). Within a Newton iteration
the Butler–Volmer current is linearised, I_f = G_f (φ_s[a] − φ_e[b]) + C_f, with
G_f ≥ 0 (S) and C_f (A) from the previous iterate. The discrete system — two
harmonic-mean face-conductance Laplacians (as in :mod:`ssbx.kernels.conduction`)
plus one conductance G_f between the two fields across each interface face — is a
weighted graph Laplacian, hence symmetric positive definite once anchored by the
Dirichlet faces: φ_s = V on the collector face (index 0 of the stack axis) and
φ_e = φ_anode on the Li | SE face (the last index). The lateral axes are periodic.
It is solved by preconditioned CG with a block-diagonal preconditioner (one
aggregation-multigrid V-cycle per field, the interface conductances lumped on the
diagonal), differentiably through ``lax.custom_linear_solve``.

Galvanostatic control uses superposition: φ = φ⁰ + V φ¹ (φ⁰: V = 0 with the
sources, φ¹: V = 1 without them), two CG solves; the total interface
current is affine in V, so V meeting the applied current is exact in one step.

Units: conductivities S/m, conductances S, currents A, potentials V. The system is
scaled by 1/(max σ · h) for float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .conduction import _diagonal, _pcg, apply_operator, face_conductances, multigrid_setup, multigrid_vcycle


class InterfaceFaces(NamedTuple):
    """Active | ion-conductor faces, grouped by (axis, direction).

    ``masks[j]`` is a bool grid marking active voxels a whose neighbour at
    a + directions[j]·e_axes[j] is an ion conductor. Static metadata (axes,
    directions) are Python tuples.
    """

    masks: tuple
    axes: tuple
    directions: tuple


def neighbour(a, axis, direction):
    """Value at i + direction·e_axis (periodic wrap)."""
    return jnp.roll(a, -direction, axis=axis)


def to_neighbour(a, axis, direction):
    """Move per-face values from the active voxel to its neighbour's position."""
    return jnp.roll(a, direction, axis=axis)


def interface_faces(active, ionic, stack_axis):
    """Find the active | ionic faces. Wrap faces across the stack axis are excluded."""
    active = jnp.asarray(active, bool)
    ionic = jnp.asarray(ionic, bool)
    masks, axes, directions = [], [], []
    n = active.shape[stack_axis]
    for axis in range(active.ndim):
        for direction in (1, -1):
            m = active & neighbour(ionic, axis, direction)
            if axis == stack_axis:
                edge = 0 if direction == -1 else n - 1
                keep = jnp.ones((n,), bool).at[edge].set(False)
                shape = [1] * active.ndim
                shape[axis] = n
                m = m & keep.reshape(shape)
            masks.append(m)
            axes.append(axis)
            directions.append(direction)
    return InterfaceFaces(tuple(masks), tuple(axes), tuple(directions))


def face_potential_drop(phi_s, phi_e, faces):
    """φ_s[a] − φ_e[b] for every face group (V), zero off the faces."""
    return tuple(
        jnp.where(m, phi_s - neighbour(phi_e, ax, d), 0.0)
        for m, ax, d in zip(faces.masks, faces.axes, faces.directions)
    )


def total_interface_current(conductance, offset, drop):
    """Σ_f (G_f Δφ_f + C_f), A."""
    return sum(jnp.sum(g * v + c) for g, c, v in zip(conductance, offset, drop))


def _dirichlet_layer(shape, axis, index, dtype):
    n = shape[axis]
    v = jnp.zeros((n,), dtype).at[index].set(1.0)
    s = [1] * len(shape)
    s[axis] = n
    return jnp.broadcast_to(v.reshape(s), shape)


class CoupledSolution(NamedTuple):
    """phi_s, phi_e (V), voltage V (V), total interface current (A), CG iterations,
    relative residual, and ``warm``: the (2, 2, *grid) pair (φ⁰, φ¹) of stacked fields
    (scaled units) to pass as ``warm_start`` to the next, similar solve."""

    phi_s: jax.Array
    phi_e: jax.Array
    voltage: jax.Array
    current: jax.Array
    iterations: jax.Array
    residual: jax.Array
    warm: jax.Array


def solve_coupled(
    sigma_s,
    sigma_e,
    voxel_size_m,
    faces: InterfaceFaces,
    conductance,
    offset,
    phi_anode,
    *,
    stack_axis,
    current=None,
    voltage=None,
    rtol=1e-6,
    rtol_unit=None,
    maxiter=500,
    preconditioner="multigrid",
    warm_start=None,
    fused=False,
    voltage_control=None,
):
    """Solve the linearised coupled potentials under current or voltage control.

    Args:
        sigma_s, sigma_e: electronic / ionic conductivity per voxel (S/m, ≥ 0).
        voxel_size_m: h (m).
        faces: :func:`interface_faces`.
        conductance: per face group, G_f (S) on the active voxel grid (0 off faces).
        offset: per face group, C_f (A).
        phi_anode: φ_e on the Li | SE face (V).
        stack_axis: axis normal to collector and anode (static).
        current: applied total current I (A, > 0 = charge) for galvanostatic control;
        voltage: collector potential V (V) for potentiostatic control (exactly one).
        preconditioner: "multigrid" or "jacobi" (static).
        warm_start: optional ``warm`` of a previous solution (initial CG guesses; they
            change the iteration count, not the result, and carry no gradient).
        fused: static. False: each right-hand side is its own PCG (the two of
            galvanostatic control one after the other). True: all right-hand sides in
            one CG loop run over them in sequence (:func:`_pcg_sequence`: one
            operator and one preconditioner call site, so the V-cycles are compiled
            once, not four times, and no preconditioner application is spent before
            the first convergence check); ``rtol`` may then be a traced scalar
            (inexact Newton). Same
            system, same stopping rule per right-hand side: the results agree to the
            CG tolerance.
        voltage_control: with ``fused=True`` only: a traced bool that chooses between
            ``current`` and ``voltage`` (both given) inside one compiled solve, instead
            of a ``lax.cond`` over two solves (which compiles the CG loop twice). Under
            voltage control the second system's right-hand side is zero, so its CG
            takes no iteration and its warm start is kept.
        rtol_unit: the CG tolerance of the lifted unit-potential system (galvanostatic
            control); default :func:`unit_rtol` of ``rtol``. A Newton iteration before
            the last may pass 1.0, which keeps the warm start's φ¹ (the last iteration
            solves it): I¹ then lags one linearisation.

    Returns:
        :class:`CoupledSolution` (potentials, V, the total interface current, CG
        iterations and relative residual).
    """
    if voltage_control is not None:
        if not fused or current is None or voltage is None:
            raise ValueError("voltage_control needs fused=True and both current and voltage")
    elif (current is None) == (voltage is None):
        raise ValueError("give exactly one of current (galvanostatic) or voltage (potentiostatic)")
    sigma_s = jnp.asarray(sigma_s)
    dtype = sigma_s.dtype
    sigma_e = jnp.asarray(sigma_e, dtype)
    h = jnp.asarray(voxel_size_m, dtype)
    shape = sigma_s.shape
    scale = jax.lax.stop_gradient(jnp.maximum(jnp.max(sigma_s), jnp.max(sigma_e)) * h)
    ms = (sigma_s > 0).astype(dtype)
    me = (sigma_e > 0).astype(dtype)

    gs = face_conductances(sigma_s * h / scale, stack_axis, "periodic")
    ge = face_conductances(sigma_e * h / scale, stack_axis, "periodic")
    n = shape[stack_axis]
    coll = _dirichlet_layer(shape, stack_axis, 0, dtype)
    anode = _dirichlet_layer(shape, stack_axis, n - 1, dtype)
    gb_s = 2.0 * sigma_s * h / scale * coll
    gb_e = 2.0 * sigma_e * h / scale * anode
    g_if = tuple(jnp.asarray(g, dtype) / scale for g in conductance)
    c_if = tuple(jnp.asarray(c, dtype) / scale for c in offset)

    lump_s = sum(g_if)
    lump_e = sum(to_neighbour(g, ax, d) for g, ax, d in zip(g_if, faces.axes, faces.directions))
    id_s = 1.0 - ms
    id_e = 1.0 - me

    # the two fields are stacked in one (2, *grid) array: a single-leaf right-hand side
    # keeps lax.custom_linear_solve transposable when only one field depends on a parameter
    def matvec(u):
        us, ue = u[0], u[1]
        ys = apply_operator(us, gs, gb_s) + id_s * us
        ye = apply_operator(ue, ge, gb_e) + id_e * ue
        for g, ax, d in zip(g_if, faces.axes, faces.directions):
            flow = g * (us - neighbour(ue, ax, d))
            ys = ys + flow
            ye = ye - to_neighbour(flow, ax, d)
        return jnp.stack([ys, ye])

    # one block per field; the two fields' blocks are applied as one batch (jax.vmap), so
    # that a single V-cycle is compiled for both
    g_both = jax.lax.stop_gradient(tuple(jnp.stack([a, b]) for a, b in zip(gs, ge)))
    gb_both = jax.lax.stop_gradient(jnp.stack([gb_s + lump_s, gb_e + lump_e]))
    if preconditioner == "multigrid":
        setup = jax.vmap(multigrid_setup)(g_both, gb_both)
        block = lambda r: jax.vmap(multigrid_vcycle)(setup, r)  # noqa: E731
    elif preconditioner == "jacobi":
        diag = jax.vmap(_diagonal)(g_both, gb_both)
        block = lambda r: r / jnp.where(diag > 0, diag, 1.0)  # noqa: E731
    else:
        raise ValueError(f"preconditioner = {preconditioner!r}: valid values are 'multigrid', 'jacobi'")
    m_both = jnp.stack([ms, me])
    id_both = 1.0 - m_both

    def precond(r):
        return m_both * block(m_both * r) + id_both * r

    # right-hand sides: sources (with V = 0) and the unit collector potential
    src_s = -sum(c_if)
    src_e = sum(to_neighbour(c, ax, d) for c, ax, d in zip(c_if, faces.axes, faces.directions))
    b_src = jnp.stack([src_s * ms, src_e * me + gb_e * phi_anode])
    # The unit-collector-potential solution φ¹ is sought as φ¹ = lift + w with the lift
    # 1 V on the electronic conductor, 0 in the electrolyte: A·lift cancels the collector
    # term (g_b·1) and the conductor's Laplacian exactly and leaves the interface
    # conductances, so w's right-hand side has the scale of the interface currents that
    # I¹ = ∂I/∂V is read from. Solved for φ¹ directly, the relative residual is measured
    # against the collector term g_b, which is larger by about σ_s h / G_f: at rtol 1e-6
    # the S2 example's V then erred by up to 2.4e-4 V (float64 at 1e-6 alike), with the
    # lift by ≤ 1.4e-5 V at 1 µm and 7e-7 V at 400 nm (docs/numerics.md).
    lift = jnp.stack([ms, jnp.zeros(shape, dtype)])
    b_unit = jnp.stack([gb_s, jnp.zeros(shape, dtype)]) - matvec(lift)

    def make_solve(guess, tol=rtol):
        def solve(mv, rhs):
            x0 = jnp.zeros(rhs.size, rhs.dtype) if guess is None else guess.reshape(-1)
            x, (k, rel, _conv) = _pcg(lambda v: mv(v.reshape(rhs.shape)).reshape(-1), rhs.reshape(-1), x0,
                                      lambda v: precond(v.reshape(rhs.shape)).reshape(-1), tol, 0.0, maxiter)
            return x.reshape(rhs.shape), (k, rel)

        return solve

    warm = None if warm_start is None else jax.lax.stop_gradient(jnp.asarray(warm_start, dtype))
    if fused:
        return _solve_fused(matvec, precond, b_src, b_unit, lift, g_if, c_if, faces, scale, ms, me, warm,
                            current, voltage, rtol, maxiter, dtype, voltage_control, rtol_unit)
    cold = make_solve(None)

    def lin_solve(rhs, guess, tol=rtol):
        solve = make_solve(guess, tol)
        return jax.lax.custom_linear_solve(matvec, rhs, solve, cold, symmetric=True, has_aux=True)

    if voltage is not None:
        v = jnp.asarray(voltage, dtype)
        # φ = φ⁰ + V φ¹ = y + V lift with A y = b_src + V b_unit
        y, (iters, rel) = lin_solve(b_src + v * b_unit, None if warm is None else warm[0] + v * (warm[1] - lift))
        u = y + v * lift
        phi_s, phi_e = u[0], u[1]
        unit = jnp.zeros_like(u) if warm is None else warm[1]
        next_warm = jnp.stack([u - v * unit, unit])
    else:
        u0, (it0, rel0) = lin_solve(b_src, None if warm is None else warm[0])
        w, (it1, rel1) = lin_solve(b_unit, None if warm is None else warm[1] - lift,
                                   unit_rtol(rtol) if rtol_unit is None else rtol_unit)
        u1 = lift + w
        next_warm = jnp.stack([u0, u1])
        phi_s, phi_e, v = _galvanostatic(u0, u1, g_if, c_if, faces, scale, current)
        iters, rel = it0 + it1, jnp.maximum(rel0, rel1)
    drop = face_potential_drop(phi_s, phi_e, faces)
    total = total_interface_current(g_if, c_if, drop) * scale
    return CoupledSolution(phi_s * ms, phi_e * me, v, total, iters, rel, jax.lax.stop_gradient(next_warm))


UNIT_RTOL_FACTOR = 2e5
UNIT_RTOL_MAX = 0.2


def unit_rtol(rtol):
    """CG tolerance of the lifted unit-potential system w = φ¹ − lift (:func:`solve_coupled`):
    ``min(2e5 rtol, 0.2)``, never below ``rtol``. Its right-hand side has the scale of the
    interface currents, and V depends on it only through I¹ = ∂I/∂V, so it may stop
    earlier than φ⁰. Measured on the first 60 steps of the S2 example against float64 at
    rtol 1e-11 (benchmarks/cell_voltage_accuracy.py, docs/numerics.md), float32 at the
    default rtol 1e-6: with w at 0.2, V is within 1.5e-5 V at 1 µm and 6.8e-6 V at 400 nm,
    at 7.15 CG iterations per step on both grids; w at 0.1 gave 1.5e-5 V / 7e-7 V at 7.37 /
    8.78 iterations, w at 0.3 2.9e-5 V at 1 µm, w at 0.6 5.1e-4 V. The unlifted φ¹ solved
    at 1e-6 erred by 2.4e-4 V."""
    rtol = jnp.asarray(rtol)
    return jnp.maximum(rtol, jnp.minimum(UNIT_RTOL_FACTOR * rtol, UNIT_RTOL_MAX))


def _galvanostatic(u0, u1, g_if, c_if, faces, scale, current):
    """Potentials and collector potential V for the applied current: the solution is
    φ = φ⁰ + V φ¹ (φ⁰: sources at V = 0, u0; φ¹: unit collector potential, u1), and the
    interface current is affine in V, I(V) = I⁰ + V I¹, so V = (I − I⁰)/I¹.
    Returns (φ_s, φ_e, V)."""
    (p0s, p0e), (p1s, p1e) = (u0[0], u0[1]), (u1[0], u1[1])
    zero = [jnp.zeros_like(c) for c in c_if]
    i0 = total_interface_current(g_if, c_if, face_potential_drop(p0s, p0e, faces)) * scale
    i1 = total_interface_current(g_if, zero, face_potential_drop(p1s, p1e, faces)) * scale
    # i1 > 0 in any solvable cell; the guard keeps the unused branch of a traced control
    # choice (voltage control: u1 = 0) finite, so that its zero cotangent stays zero
    v = (current - i0) / jnp.where(i1 != 0, i1, 1.0)
    return p0s + v * p1s, p0e + v * p1e, v


def _pcg_sequence(matvec, b, x0, precond, rtol, maxiter):
    """Preconditioned CG on m systems A x_j = b_j (b, x0: (m, ...); ``rtol`` a scalar or
    one per system), one after the other in a ``lax.scan``, so that one compiled CG loop
    (and one compiled V-cycle) serves them all.

    Each CG is ordered "precondition first" (z = M r, β = (r·z)/(r·z)_old, p = z + β p,
    α = (r·z)/(p·Ap)): the loop body holds the only call of ``precond`` and of
    ``matvec`` besides the initial residual, and no preconditioner application is spent
    on a warm start that already meets the tolerance. It stops when ‖r‖ ≤ rtol ‖b‖, the
    rule of :func:`ssbx.kernels.conduction._pcg`. Hestenes & Stiefel, J. Res. NBS 49,
    409 (1952); the preconditioned form as in Saad, Iterative Methods for Sparse Linear
    Systems (2nd ed., 2003), Algorithm 9.1.

    Returns ``(x, iterations)``: iterations summed over the systems.
    """
    # the vectors keep their grid shape: flattened, XLA-CPU computed the operator twice
    # per iteration (once for p·Ap, once for r − α Ap)
    def one(count, triple):
        bj, xj, rtol_j = triple
        bnorm = jnp.sqrt(jnp.sum(bj * bj))
        tol = rtol_j * bnorm
        r = bj - matvec(xj)

        def cond(s):
            return (s[5] > tol) & (s[4] < maxiter) & (bnorm > 0)

        def body(s):
            x, r, p, rz_old, k, _ = s
            z = precond(r)
            rz = jnp.sum(r * z)
            beta = jnp.where((k > 0) & (rz_old != 0), rz / jnp.where(rz_old != 0, rz_old, 1.0), 0.0)
            p = z + beta * p
            ap = matvec(p)
            pap = jnp.sum(p * ap)
            alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
            x = x + alpha * p
            r = r - alpha * ap
            return x, r, p, rz, k + 1, jnp.sqrt(jnp.sum(r * r))

        init = (xj, r, jnp.zeros_like(r), jnp.asarray(0.0, bj.dtype), jnp.asarray(0, jnp.int32),
                jnp.sqrt(jnp.sum(r * r)))
        x, _, _, _, k, _ = jax.lax.while_loop(cond, body, init)
        return count + k, jnp.where(bnorm > 0, x, 0.0)

    rtols = jnp.broadcast_to(jnp.asarray(rtol, b.dtype), b.shape[:1])
    count, x = jax.lax.scan(one, jnp.asarray(0, jnp.int32), (b, x0, rtols))
    return x, count


def _solve_fused(matvec, precond, b_src, b_unit, lift, g_if, c_if, faces, scale, ms, me, warm, current, voltage,
                 rtol, maxiter, dtype, voltage_control=None, rtol_unit=None):
    """:func:`solve_coupled` with its right-hand sides in one :func:`_pcg_sequence`
    (galvanostatic: φ⁰ and φ¹), differentiable through ``lax.custom_linear_solve``.

    Both controls solve two stacked systems. Galvanostatic: (b⁰, b¹) → (φ⁰, φ¹), then V
    from the applied current (:func:`_galvanostatic`). Potentiostatic: (b⁰ + V b¹, 0):
    the first is the solution itself (warm-started from φ⁰ + V φ¹), the second takes no
    iteration and φ¹ of the warm start is carried on. ``voltage_control`` (traced)
    picks between them; ``None`` means the control given (``voltage`` or ``current``), so
    every call compiles the same two-system solve."""
    def stacked_mv(u):
        return jnp.stack([matvec(u[j]) for j in range(u.shape[0])])

    rtol = jnp.asarray(rtol, dtype)
    rtols = jnp.stack([rtol, jnp.asarray(unit_rtol(rtol) if rtol_unit is None else rtol_unit, dtype)])

    def make_solve(guess):
        def solve(_mv, rhs):
            x0 = jnp.zeros_like(rhs) if guess is None else guess
            return _pcg_sequence(matvec, rhs, x0, precond, rtols, maxiter)

        return solve

    def lin_solve(rhs, guess):
        return jax.lax.custom_linear_solve(stacked_mv, rhs, make_solve(guess), make_solve(None), symmetric=True,
                                           has_aux=True)

    by_voltage = jnp.asarray(voltage is not None if voltage_control is None else voltage_control)
    v = jnp.asarray(0.0 if voltage is None else voltage, dtype)
    unit = jnp.zeros_like(b_src) if warm is None else warm[1]
    # system 0: φ⁰ (current control) or y = φ − V lift (voltage control); system 1: w = φ¹ − lift
    rhs = jnp.stack([jnp.where(by_voltage, b_src + v * b_unit, b_src), jnp.where(by_voltage, 0.0, b_unit)])
    guess = None if warm is None else jnp.stack([jnp.where(by_voltage, warm[0] + v * (unit - lift), warm[0]),
                                                 warm[1] - lift])
    y, iters = lin_solve(rhs, guess)
    u = jnp.stack([y[0], y[1] + lift])  # (φ⁰, φ¹) under current control
    g_s, g_e, g_v = _galvanostatic(u[0], u[1], g_if, c_if, faces, scale, 0.0 if current is None else current)
    held = y[0] + v * lift  # the potentials under voltage control
    phi_s = jnp.where(by_voltage, held[0], g_s)
    phi_e = jnp.where(by_voltage, held[1], g_e)
    v = jnp.where(by_voltage, v, g_v)
    next_warm = jnp.where(by_voltage, jnp.stack([held - v * unit, unit]), u)
    drop = face_potential_drop(phi_s, phi_e, faces)
    total = total_interface_current(g_if, c_if, drop) * scale
    res = jax.lax.stop_gradient(rhs - stacked_mv(y)).reshape(rhs.shape[0], -1)
    bn = jnp.sqrt(jnp.sum(jax.lax.stop_gradient(rhs).reshape(rhs.shape[0], -1) ** 2, axis=1))
    rel = jnp.max(jnp.where(bn > 0, jnp.sqrt(jnp.sum(res**2, axis=1)) / jnp.where(bn > 0, bn, 1.0), 0.0))
    return CoupledSolution(phi_s * ms, phi_e * me, v, total, iters, rel, jax.lax.stop_gradient(next_warm))
