"""A particle in a solid-state cell, cycled by a battery protocol (docs/physics.md S2).

Geometry (stack axis = last array axis, z in 3D): the cathode collector is the face
z = 0 (φ_s = V there), then the composite layer (ECBD around one polycrystalline
particle), then the separator (solid electrolyte), and the Li-metal anode is the face
at the top (φ_e = −η_Li there, φ_Li = 0 V is the reference). The lateral faces are
periodic; the lateral size follows from the requested areal capacity.

Each electrochemical step Δt (``electrochemistry.time_step_s``):

1. Newton iterations on the Butler–Volmer current of every active | ion-conductor
   face, i = i0(x)[exp(α_a fη) − exp(−α_c fη)], η = φ_s − φ_e − U(x) − i R_int
   (f = F/RT; φ at the two voxel centres, so R_int gets the two half-voxel ohmic
   resistances h/2σ_s + h/2σ_e added, and U is taken at the face, extrapolated from
   the voxel mean with the flux: x_face = x − (h/2) i/(F c_max D_nn), which to first
   order adds R_diff = −U'(x) h/(2 F c_max D_nn) in series; without it the surface
   concentration lags by half a voxel, tens of mV at 1C), each linearised and solved with the coupled potentials of
   :mod:`ssbx.kernels.electrode` under current control (CC, rest) or voltage control
   (CV). The currents used are those of the last linear solve, so they add up to the
   applied current exactly; the BV residual left is reported (``bv_residual``).
2. Li diffusion in the particle over Δt with explicit sub-steps, the face currents
   entering as the surface source −I/(F c_max h³) (quasi-static potentials, frozen
   during the sub-steps). Δt is the configured step, shortened so that no voxel
   covers more than half its distance to x = 0 or 1 and so that Δt ≤ τ, the kinetic
   relaxation time F c_max h³ / (Σ_f G_f |U'(x)|) of every surface voxel (beyond it
   frozen currents overshoot and, under voltage control, oscillate).

i0(x) = i0_ref (1 − x)^α_a x^α_c / 0.5^(α_a+α_c) (the c-dependence of docs/physics.md §4 with
a constant c_SE, normalised so that i0(½) = i0_ref). The Li anode has symmetric
kinetics (α = ½), so η_Li = (2RT/F) asinh(i_Li / 2 i0_Li) with the mean anode current
density (a reference electrode with kinetic resistance, docs/physics.md §3); during a CV
step it lags one Newton iteration.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.kernels import butler_volmer as kbv
from ssbx.kernels import diffusion as kdiff
from ssbx.kernels.conduction import log_interpolated_conductivity
from ssbx.kernels.electrode import (
    face_potential_drop,
    interface_faces,
    neighbour,
    solve_coupled,
)
from ssbx.kernels.ocv import get_ocv

from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import SimulationDiverged
from ssbx.engine.io.run_file import RunWriter
from ssbx.kernels.constants import FARADAY
from ssbx.engine.geometry.microstructure import (ION_CONDUCTORS, Microstructure)
from ssbx.engine.model.particle import component_table, TransportParams
from ssbx.engine.config.protocol import parse_protocol
from ssbx.engine.geometry.cell_stack import cell_microstructure, phase_conductivities
from ssbx.engine.safe_files import exception_status

from ssbx.kernels.constants import GAS_CONSTANT  # noqa: E402






class CellModel(eqx.Module):
    """Static data of a cell and the per-step solvers (all arrays, jit-friendly)."""

    grain_id: jax.Array
    sigma_s: jax.Array  # S/m; in active voxels the constant value, or unused under a law
    sigma_e: jax.Array
    area_m2: jax.Array  # per active voxel: the area of each of its interface faces
    component_table: jax.Array
    faces: tuple
    face_index: tuple  # per face group: flat indices of its active voxels (int32)
    face_diffusivity: tuple  # per face group: the voxel's normal diffusivity D_kk (m²/s)
    axes: tuple = eqx.field(static=True)
    directions: tuple = eqx.field(static=True)
    voxel_size_m: float = eqx.field(static=True)
    cell_area_m2: float = eqx.field(static=True)
    c_max: float = eqx.field(static=True)
    ocv_name: str = eqx.field(static=True)
    i0_ref: float = eqx.field(static=True)
    alpha_a: float = eqx.field(static=True)
    alpha_c: float = eqx.field(static=True)
    r_int: float = eqx.field(static=True)
    anode_i0: float = eqx.field(static=True)
    temperature_K: float = eqx.field(static=True)
    newton_iterations: int = eqx.field(static=True)
    newton_tolerance_V: float = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    preconditioner: str = eqx.field(static=True)
    # x-dependent active-material conductivity: (x points, S/m points), or None
    active_sigma_law: tuple | None = eqx.field(static=True, default=None)
    # (start, stop) per axis of the bounding box of the active voxels: diffusion runs there
    active_box: tuple = eqx.field(static=True, default=())

    @property
    def box(self) -> tuple:
        """Slices of the active voxels' bounding box (every interface current is inside)."""
        return tuple(slice(a, b) for a, b in self.active_box)

    @property
    def stack_axis(self) -> int:
        return self.grain_id.ndim - 1

    def interface(self):
        from ssbx.kernels.electrode import InterfaceFaces

        return InterfaceFaces(self.faces, self.axes, self.directions)

    def ocv(self, x):
        return get_ocv(self.ocv_name)(x)

    def electronic_conductivity(self, x):
        """σ_s per voxel (S/m): the static map, with the active voxels' value taken from
        the law σ(x) when one is set (interpolated in log σ, kernels.conduction)."""
        if self.active_sigma_law is None:
            return self.sigma_s
        law = log_interpolated_conductivity(x, *self.active_sigma_law)
        return jnp.where(self.grain_id >= 0, law.astype(self.sigma_s.dtype), self.sigma_s)

    def exchange_current(self, x):
        x = jnp.clip(x, 1e-6, 1 - 1e-6)
        norm = 0.5 ** (self.alpha_a + self.alpha_c)
        return self.i0_ref * (1 - x) ** self.alpha_a * x**self.alpha_c / norm

    def anode_potential(self, current_A):
        """φ_e on the Li | SE face for a total cell current (A, > 0 = charge = plating)."""
        i_li = -current_A / self.cell_area_m2  # stripping-positive current density
        f = FARADAY / (GAS_CONSTANT * self.temperature_K)
        eta = (2.0 / f) * jnp.arcsinh(i_li / (2.0 * self.anode_i0))
        return -eta




def build_cell_model(scenario: Scenario, micro: Microstructure, info: dict, dtype) -> CellModel:
    ec = scenario.electrochemistry
    labels = micro.labels
    active = micro.active
    law = ec.active_conductivity_table()
    sigma_s, sigma_e = phase_conductivities(labels, ec)
    stack = micro.ndim - 1
    faces = interface_faces(active, np.isin(labels, ION_CONDUCTORS), stack)
    counts = micro.reactive_face_count()
    ratio = np.where(counts > 0, micro.reactive_area_faces() / np.maximum(counts, 1), 0.0)
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray(scenario.material.resolved_diffusivity(), dtype),
        orientations=jnp.asarray(micro.orientations, dtype),
        flux_mol_m2_s=jnp.asarray(0.0, dtype),
        c_max_mol_m3=jnp.asarray(scenario.material.resolved_c_max(), dtype),
    )
    reactive = active & micro.reactive_grains[np.maximum(micro.grain_id, 0)]
    masks = tuple(jnp.asarray(np.asarray(m) & reactive) for m in faces.masks)
    table = np.asarray(component_table(params, micro.ndim))
    gid = np.maximum(micro.grain_id, 0)
    face_d = tuple(jnp.asarray(np.where(np.asarray(m), table[gid, ax], 0.0), dtype)
                   for m, ax in zip(masks, faces.axes))
    return CellModel(
        grain_id=jnp.asarray(micro.grain_id),
        sigma_s=jnp.asarray(sigma_s, dtype),
        sigma_e=jnp.asarray(sigma_e, dtype),
        area_m2=jnp.asarray(ratio * micro.voxel_size_m ** (micro.ndim - 1), dtype),
        component_table=component_table(params, micro.ndim),
        faces=masks,
        face_index=tuple(jnp.asarray(np.flatnonzero(np.asarray(m)), jnp.int32) for m in masks),
        face_diffusivity=face_d,
        axes=faces.axes,
        directions=faces.directions,
        voxel_size_m=micro.voxel_size_m,
        cell_area_m2=float(info["cell_area_m2"]),
        c_max=scenario.material.resolved_c_max(),
        ocv_name=scenario.material.ocv_key(ec.ocv),
        i0_ref=ec.exchange_current_A_m2,
        alpha_a=ec.alpha_a,
        alpha_c=ec.alpha_c,
        r_int=ec.interface_resistance_ohm_m2,
        anode_i0=ec.anode_exchange_current_A_m2,
        temperature_K=ec.temperature_K,
        newton_iterations=ec.newton_iterations,
        newton_tolerance_V=ec.newton_tolerance_V,
        rtol=ec.solver_rtol,
        preconditioner=ec.preconditioner,
        active_sigma_law=law,
        active_box=tuple((int(np.min(i)), int(np.max(i)) + 1) for i in np.nonzero(active)),
    )


def _linearised_kinetics(model: CellModel, x, drop, v_ref):
    """Per face group: (G_f in S, C_f in A, BV current in A) linearised at ``drop``.

    ``drop`` is φ_s' − φ_e with the *shifted* electronic potential φ_s' = φ_s − v_ref:
    solving for potentials of the size of overpotentials instead of ~4 V keeps float32
    accurate (CG's error scales with κ · eps · |φ|).
    """
    f = FARADAY / (GAS_CONSTANT * model.temperature_K)
    out_g, out_c, out_i = [], [], []
    h = model.voxel_size_m
    sigma_s = model.electronic_conductivity(x)
    inv_s = jnp.where(sigma_s > 0, 1.0 / jnp.where(sigma_s > 0, sigma_s, 1.0), 0.0)
    inv_e = jnp.where(model.sigma_e > 0, 1.0 / jnp.where(model.sigma_e > 0, model.sigma_e, 1.0), 0.0)
    # the kinetics is evaluated on each group's face voxels only (gathered by index):
    # they are a thin shell, and the bracketed Newton for η costs 30 iterations per value
    for idx, d, ax, dr, d_n in zip(model.face_index, drop, model.axes, model.directions,
                                   model.face_diffusivity):
        take = lambda a: a.reshape(-1)[idx]  # noqa: E731
        xf = take(x)  # face voxels are active, so U and i0 are finite
        u = model.ocv(xf) - v_ref
        slope = jax.vmap(jax.grad(model.ocv))(jnp.clip(xf, 1e-4, 1 - 1e-4))
        i0 = model.exchange_current(xf)
        df = take(d)
        # the linear solve joins voxel centres: the half voxels on both sides of the
        # face are ohmic resistances in series with the kinetics (Ω m²) ...
        r_face = model.r_int + 0.5 * h * (take(inv_s) + take(neighbour(inv_e, ax, dr)))
        # ... and the kinetics sees the surface concentration, not the voxel mean:
        # x_face = x − (h/2) i / (F c_max D_n), i.e. U(x_face) ≈ U(x) + R_diff i with
        # R_diff = −U'(x) (h/2) / (F c_max D_n) (Ω m², ≥ 0 since U' < 0)
        r_face = r_face + jnp.maximum(-slope, 0.0) * 0.5 * h / (
            FARADAY * model.c_max * jnp.maximum(take(d_n), 1e-30))
        eta = kbv.solve_overpotential(df - u, i0, r_face, model.temperature_K, model.alpha_a, model.alpha_c)
        i = kbv.butler_volmer(eta, i0, model.temperature_K, model.alpha_a, model.alpha_c)
        g_bv = i0 * f * (model.alpha_a * jnp.exp(model.alpha_a * f * eta)
                         + model.alpha_c * jnp.exp(-model.alpha_c * f * eta))
        g = g_bv / (1.0 + r_face * g_bv)
        area = take(model.area_m2)
        scatter = lambda v: jnp.zeros(x.size, x.dtype).at[idx].set(v.astype(x.dtype)).reshape(x.shape)  # noqa: E731
        out_g.append(scatter(g * area))
        out_c.append(scatter((i - g * df) * area))
        out_i.append(scatter(i * area))
    return tuple(out_g), tuple(out_c), tuple(out_i)


@eqx.filter_jit
def electrochemical_solve(model: CellModel, x, phi_s, phi_e, warm, v_ref, target, current_guess,
                          voltage_control: bool):
    """Newton iterations for the potentials, warm-started from the previous step's
    superposition fields ``warm`` (see :class:`ssbx.kernels.electrode.CoupledSolution`).

    ``phi_s`` is shifted by the reference voltage ``v_ref`` (φ_s − v_ref), and so is the
    returned one; the returned V is absolute. Under voltage control ``target`` is the
    absolute collector voltage.

    Returns (phi_s, phi_e, V, I, per-voxel current, CG iterations, BV residual, τ_min, warm).
    """
    faces = model.interface()

    def newton(carry, final=True):
        phi_s, phi_e, _v, current, iters, _g, _c, warm, k, _change = carry
        drop = face_potential_drop(phi_s, phi_e, faces)
        g, c, _ = _linearised_kinetics(model, x, drop, v_ref)
        kwargs = {"voltage": target - v_ref} if voltage_control else {"current": target}
        sol = solve_coupled(
            model.electronic_conductivity(x), model.sigma_e, model.voxel_size_m, faces, g, c,
            model.anode_potential(current), stack_axis=model.stack_axis, rtol=model.rtol,
            preconditioner=model.preconditioner, maxiter=5000, warm_start=warm,
            rtol_unit=None if final else 1.0, **kwargs,
        )
        new_drop = face_potential_drop(sol.phi_s, sol.phi_e, faces)
        change = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a - b), initial=0.0) for a, b in zip(new_drop, drop)])
        return (sol.phi_s, sol.phi_e, sol.voltage.astype(x.dtype), sol.current.astype(x.dtype),
                iters + sol.iterations, g, c, sol.warm, k + 1, change.astype(x.dtype))

    # the device stepper's rule (solve/cell_step.potentials): iterate until no face
    # drop changes by more than newton_tolerance_V, then one more iteration; only that
    # one solves the unit-potential system (the others keep its warm start)
    zeros = tuple(jnp.zeros_like(x) for _ in model.faces)
    init = (phi_s, phi_e, jnp.asarray(0.0, x.dtype), jnp.asarray(current_guess, x.dtype),
            jnp.asarray(0, jnp.int32), zeros, zeros, warm, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, x.dtype))
    carry = jax.lax.while_loop(
        lambda cr: (cr[-2] < model.newton_iterations - 1) & (cr[-1] > model.newton_tolerance_V),
        lambda cr: newton(cr, False), init)
    phi_s, phi_e, voltage, _, iters, g, c, warm, _, _ = newton(carry)
    voltage = voltage + v_ref
    # currents of the last linear solve: they meet the applied current exactly
    drop = face_potential_drop(phi_s, phi_e, faces)
    face_currents = tuple(gi * d + ci for gi, ci, d in zip(g, c, drop))
    g_out, _, i_bv = _linearised_kinetics(model, x, drop, v_ref)
    scale = jnp.maximum(sum(jnp.sum(jnp.abs(i)) for i in face_currents), 1e-30)
    bv_residual = sum(jnp.sum(jnp.abs(a - b)) for a, b in zip(face_currents, i_bv)) / scale
    voxel_current = sum(face_currents)  # A per active voxel, > 0 = delithiation
    # kinetic relaxation time of each surface voxel, τ = F c_max h^d / (Σ_f G_f |U'(x)|):
    # explicit steps of x with frozen currents are stable for Δt ≲ τ
    x_safe = jnp.where(model.grain_id >= 0, jnp.clip(x, 1e-4, 1 - 1e-4), 0.5)
    slope = jnp.abs(jax.vmap(jax.grad(lambda v: model.ocv(v)))(x_safe.reshape(-1)).reshape(x.shape))
    conductance = sum(g_out)  # at the converged drops, as the device stepper
    tau = FARADAY * model.c_max * model.voxel_size_m ** x.ndim / jnp.maximum(conductance * slope, 1e-30)
    tau_min = jnp.min(jnp.where(conductance > 0, tau, jnp.inf))
    return (phi_s, phi_e, voltage, sum(jnp.sum(i) for i in face_currents), voxel_current, iters,
            bv_residual, tau_min, warm)


@eqx.filter_jit
def diffuse(model: CellModel, x, voxel_current, dt_s, n_sub):
    """Advance x over dt_s with n_sub explicit steps; the face currents are the source.

    ``dt_s`` and ``n_sub`` are traced (jnp scalars), so changing them does not recompile.
    """
    h = model.voxel_size_m
    # only the particle's bounding box: the stencil has no flux out of active voxels and
    # pads with zeros at the box edge, so the result is that of the whole grid
    box = model.box
    source = -voxel_current[box] / (FARADAY * model.c_max * h ** x.ndim)
    grain_id = model.grain_id[box]
    dt = dt_s / n_sub

    def body(_, xb):
        return kdiff.explicit_step(xb, dt, grain_id, model.component_table, h, source)

    return x.at[box].set(jax.lax.fori_loop(0, n_sub, body, x[box]))


@dataclasses.dataclass
class CellResult:
    path: Path
    status: str
    message: str
    t_end_s: float
    n_steps: int


def run_cell(scenario: Scenario, out_path, progress: bool = True, dtype=jnp.float32) -> CellResult:
    """Cycle the cell of ``scenario`` through its protocol and write the run file."""
    from tqdm.auto import tqdm

    micro, info = cell_microstructure(scenario)
    model = build_cell_model(scenario, micro, info, dtype)
    steps = parse_protocol(scenario.protocol.steps, scenario.protocol.cycles)
    ec = scenario.electrochemistry
    mat = scenario.material
    h = micro.voxel_size_m
    active = micro.active
    one_c = info["capacity_Ah"]  # 1C = capacity / 1 h: Ah -> A numerically
    dt_stable = kdiff.stable_time_step(max(mat.resolved_diffusivity()), h, micro.ndim,
                                       scenario.numerics.time_step_safety)

    x = jnp.where(jnp.asarray(active), jnp.asarray(mat.x_initial, dtype), jnp.asarray(0.0, dtype))
    # host-side checks and sums look at the particle's bounding box only (every active
    # voxel and every interface current is inside it): at 100 nm that is a fifth of the grid
    box = model.box
    active_box = active[box]
    v_ref = float(get_ocv(mat.ocv_key(ec.ocv))(mat.x_initial))  # φ_s is stored as φ_s − v_ref
    phi_s = jnp.zeros_like(x)
    phi_e = jnp.zeros_like(phi_s)
    li_of = lambda xa: model.c_max * h**micro.ndim * float(np.sum(xa, dtype=np.float64))  # noqa: E731
    t = 0.0
    n_done = 0
    charge_in = 0.0  # ∫ I dt, C
    status, message = "completed", "protocol finished"
    cycle_len = len(steps) // scenario.protocol.cycles

    def snapshot(writer, t_s, x, phi_s, phi_e, voxel_current, v_ref):
        xa = np.asarray(x, np.float64)
        area = np.asarray(model.area_m2) * sum(np.asarray(m, np.float64) for m in model.faces)
        density = np.where(area > 0, np.asarray(voxel_current) / np.where(area > 0, area, 1.0), np.nan)
        writer.append_snapshot(
            t_s,
            {
                "soc": np.where(active, xa, np.nan),
                "phi_s_V": np.where(np.asarray(model.sigma_s) > 0, np.asarray(phi_s, np.float64) + v_ref, np.nan),
                "phi_e_V": np.where(np.asarray(model.sigma_e) > 0, np.asarray(phi_e), np.nan),
                "interface_current_A_m2": density,
                **({} if model.active_sigma_law is None else {
                    "sigma_s_S_m": np.where(np.asarray(model.sigma_s) > 0,
                                            np.asarray(model.electronic_conductivity(x), np.float64), np.nan)}),
            },
            {},
            {"mean_soc": float(xa[active].mean())},
        )

    bar = tqdm(disable=not progress, desc=scenario.run.name, unit="step", dynamic_ncols=True)
    voxel_current = jnp.zeros_like(x)
    warm = jnp.zeros((2, 2) + x.shape, dtype)
    current = 0.0
    with RunWriter(out_path, scenario.to_json(), micro) as writer:
        writer._file["geometry"].attrs["cell_area_m2"] = info["cell_area_m2"]
        writer._file["geometry"].attrs["capacity_1C_A"] = one_c
        snapshot(writer, 0.0, x, phi_s, phi_e, voxel_current, v_ref)
        try:
            for k, step in enumerate(steps):
                t_step = 0.0
                bar.set_postfix_str(step.text)
                while True:
                    if step.mode == "cv":
                        target, voltage_control = step.voltage_V, True
                    else:
                        current = step.sign * step.c_rate * one_c if step.mode == "cc" else 0.0
                        target, voltage_control = current, False
                    out = electrochemical_solve(model, x, phi_s, phi_e, warm, jnp.asarray(v_ref, dtype),
                                                jnp.asarray(target, dtype), jnp.asarray(current, dtype),
                                                voltage_control)
                    phi_s, phi_e, voltage, current_now, voxel_current, iters, bv_res, tau_min, warm = out
                    voltage, current_now = float(voltage), float(current_now)
                    if math.isfinite(voltage):  # re-centre φ_s on the new voltage
                        phi_s = jnp.where(model.sigma_s > 0, phi_s - (voltage - v_ref), 0.0).astype(dtype)
                        v_ref = voltage
                    if not (math.isfinite(voltage) and math.isfinite(current_now)):
                        raise SimulationDiverged(
                            f"step {k + 1} ({step.text!r}) at t = {t:.6g} s: the potential solve gave "
                            f"V = {voltage}, I = {current_now} A (the current cannot be met)"
                        )
                    current = current_now
                    # adaptive step: no voxel covers more than half its distance to 0 or 1
                    rate = -np.asarray(voxel_current[box], np.float64)[active_box] / (FARADAY * model.c_max * h**micro.ndim)
                    xa = np.asarray(x[box], np.float64)[active_box]
                    room = np.where(rate < 0, xa, 1.0 - xa)
                    with np.errstate(divide="ignore"):
                        limit = np.min(np.where(rate != 0, 0.5 * room / np.abs(rate), np.inf))
                    dt = min(ec.time_step_s, limit, float(tau_min))
                    if step.max_duration_s is not None:
                        dt = min(dt, step.max_duration_s - t_step)
                    if dt < 1e-3 * ec.time_step_s:
                        status = "stopped"
                        message = (f"step {k + 1} ({step.text!r}) at t = {t:.6g} s: an active voxel is about to "
                                   "empty or fill under the local current (time step below 1e-3 of "
                                   "electrochemistry.time_step_s) before the step's limit was reached")
                        break
                    n_sub = max(1, math.ceil(dt / dt_stable))
                    x = diffuse(model, x, voxel_current, jnp.asarray(dt, dtype), jnp.asarray(n_sub, jnp.int32))
                    xa = np.asarray(x[box])[active_box]
                    if not np.all(np.isfinite(xa)):
                        raise SimulationDiverged(f"step {k + 1} ({step.text!r}) at t = {t + dt:.6g} s: x became NaN/Inf")
                    if xa.min() < 0 or xa.max() > 1:
                        status = "stopped"
                        message = (f"step {k + 1} ({step.text!r}) at t = {t + dt:.6g} s: Li content left [0, 1] "
                                   f"(min {xa.min():.3g}, max {xa.max():.3g}); the file keeps every step so far")
                    t += dt
                    t_step += dt
                    n_done += 1
                    charge_in += current * dt
                    writer.append_timeseries({
                        "t_s": np.array([t]), "voltage_V": np.array([voltage]), "current_A": np.array([current]),
                        "li_mol": np.array([li_of(xa)]), "mean_soc": np.array([float(xa.mean())]),
                        "charge_Ah": np.array([charge_in / 3600.0]), "step_index": np.array([k]),
                        "cycle_index": np.array([k // cycle_len]), "cg_iterations": np.array([int(iters)]),
                        "bv_residual": np.array([float(bv_res)]),
                    })
                    bar.update(1)
                    if status != "completed":
                        break
                    if step.mode == "cc" and step.sign * (voltage - step.voltage_V) >= 0:
                        break
                    if step.mode == "cv" and abs(current) <= step.c_rate * one_c:
                        break
                    if step.max_duration_s is not None and t_step >= step.max_duration_s - 1e-9:
                        break
                snapshot(writer, t, x, phi_s, phi_e, voxel_current, v_ref)
                if status != "completed":
                    break
        except SimulationDiverged as err:
            status, message = "diverged", str(err)
        except BaseException as err:  # Ctrl-C → "interrupted", anything else → "failed"; never "completed"
            status, message = exception_status(err, None)
            raise
        finally:
            bar.close()
            writer.set_status(status, message)
            _write_cycle_summary(writer)
    if status == "diverged":
        raise SimulationDiverged(message)
    return CellResult(Path(out_path), status, message, t, n_done)


def _write_cycle_summary(writer: RunWriter, current_holds_until_next: bool = False):
    """Per cycle: charge and discharge capacity (Ah) and Coulombic efficiency.

    The host loop's rows hold the current of the interval that ends at the row's time
    (``current_holds_until_next = False``); the device stepper's rows hold the current
    that drives the interval up to the next row (True): then the charge of (t_j, t_(j+1)]
    is I_j (t_(j+1) − t_j), counted in the cycle of row j."""
    f = writer._file
    if "current_A" not in f["timeseries"]:
        return
    t = f["timeseries/t_s"][()]
    current = f["timeseries/current_A"][()]
    cycle = f["timeseries/cycle_index"][()].astype(int)
    if current_holds_until_next:
        dt, current, cycle = np.diff(t), current[:-1], cycle[:-1]
    else:
        dt = np.diff(np.concatenate([[0.0], t]))
    group = f.require_group("cycles")
    charge, discharge = [], []
    for c in range(int(cycle.max()) + 1 if cycle.size else 0):
        sel = cycle == c
        charge.append(float(np.sum(np.clip(current[sel], 0, None) * dt[sel]) / 3600.0))
        discharge.append(float(np.sum(np.clip(-current[sel], 0, None) * dt[sel]) / 3600.0))
    for name, values in (("charge_Ah", charge), ("discharge_Ah", discharge),
                         ("coulombic_efficiency", [d / c if c > 0 else np.nan for c, d in zip(charge, discharge)])):
        if name in group:
            del group[name]
        group.create_dataset(name, data=np.asarray(values))
    f.flush()
