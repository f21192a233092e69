"""Butler–Volmer interface kinetics (docs/physics.md §4).

Cathode (active | ionic conductor) interface::

    i  = i0 [exp(α_a F η / R T) − exp(−α_c F η / R T)]            (A/m²)
    η  = φ_s − φ_e − U(x) − i R_int                                  (V)
    i0 = F k (c_max − c)^α_a c^α_c (c_SE)^α_a                        (A/m²)

Sign convention: positive i is anodic at the cathode = delithiation (charge); the
current leaves the solid phase and enters the ionic conductor. With R_int > 0 the
equation is implicit in i and is solved per interface point (see
:func:`solve_overpotential`). Temperature enters only through R T.

Units: c, c_max, c_SE in mol/m³; k in mol m⁻² s⁻¹ (mol/m³)^−(2α_a+α_c), so that i0 is
in A/m²; R_int in Ω·m²; potentials in V; T in K.

Li-metal anode (Li ⇌ Li⁺ + e⁻, U = 0 V vs Li/Li⁺ by definition)::

    i = i0_Li [exp(α_a F η / R T) − exp(−α_c F η / R T)],  η = φ_s − φ_e − i R_int

positive i = stripping (anodic: Li leaves the metal, enters the electrolyte).

Small-signal (linearised) charge-transfer resistance, α convention
------------------------------------------------------------------
d i / d η at η = 0 equals i0 F (α_a + α_c) / (R T), hence

    R_ct = R T / (F i0 (α_a + α_c))    (Ω·m²)

α_a and α_c are the anodic and cathodic transfer coefficients *as they appear in the
exponents* (not a symmetry factor β with α_c = 1 − β unless the user chooses so). For
α_a = α_c = 0.5 this gives R_ct = R T / (F i0), the form quoted in docs/physics.md §10.

References: Bard & Faulkner, *Electrochemical Methods*, 2nd ed. (2001), §3.4 (BV and
its linearisation); Newman & Thomas-Alyea, *Electrochemical Systems*, 3rd ed. (2004),
ch. 8; Doyle, Fuller & Newman, J. Electrochem. Soc. 140, 1526 (1993) for the
insertion-electrode i0 form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "FARADAY",
    "GAS_CONSTANT",
    "exchange_current_density",
    "butler_volmer",
    "solve_overpotential",
    "cathode_current_density",
    "lithium_metal_current_density",
    "charge_transfer_resistance",
    "interface_resistance_from_gap",
]

from .constants import FARADAY, GAS_CONSTANT

_NEWTON_STEPS = 30


def exchange_current_density(c, c_max, k, c_se=1.0, alpha_a=0.5, alpha_c=0.5):
    """i0 = F k (c_max − c)^α_a c^α_c (c_SE)^α_a  (A/m²).

    Args:
        c: Li concentration in the active material at the interface (mol/m³).
        c_max: maximum Li concentration (mol/m³).
        k: rate constant, mol m⁻² s⁻¹ (mol/m³)^−(2α_a+α_c).
        c_se: Li⁺ concentration in the (single-ion) conductor, constant (mol/m³).
        alpha_a, alpha_c: anodic / cathodic transfer coefficients.

    The gradient with respect to c is singular at c = 0 and c = c_max (the power
    law has infinite slope there); callers keep x = c/c_max inside (0, 1).
    """
    c = jnp.asarray(c)
    return FARADAY * k * (c_max - c) ** alpha_a * c**alpha_c * jnp.asarray(c_se) ** alpha_a


def butler_volmer(eta, i0, temperature_K=298.15, alpha_a=0.5, alpha_c=0.5):
    """i = i0 [exp(α_a F η/RT) − exp(−α_c F η/RT)]  (A/m², positive = anodic)."""
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    eta = jnp.asarray(eta)
    return i0 * (jnp.exp(alpha_a * f * eta) - jnp.exp(-alpha_c * f * eta))


def _residual(eta, eta0, i0, r_int, temperature_K, alpha_a, alpha_c):
    """h(η) = η − η0 + R_int i_BV(η); monotone increasing, h' ≥ 1."""
    return eta - eta0 + r_int * butler_volmer(eta, i0, temperature_K, alpha_a, alpha_c)


def _newton_bracketed(eta0, i0, r_int, temperature_K, alpha_a, alpha_c):
    """Root of h(η) = 0 by safeguarded Newton on a log-transformed residual.

    With s = sign(η0) and t = s η ∈ (0, |η0|) the residual is rewritten as
    H(t) = log(R_int B(t)) − log(|η0| − t), B(t) = s i_BV(s t) > 0, which is increasing
    and nearly linear in the Tafel regime, so Newton converges in a few steps where
    Newton on h itself crawls (exponential nonlinearity). log B is evaluated as
    log i0 + α' f t + log(−expm1(−(α_a+α_c) f t)) (no overflow). Steps leaving the
    bracket (lo, hi) are replaced by bisection. R_int = 0 or η0 = 0 give η = η0.
    """
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    eta0 = jnp.asarray(eta0)
    dtype = jnp.result_type(eta0, i0, r_int, float)
    eta0 = eta0.astype(dtype)
    sgn = jnp.where(eta0 >= 0, 1.0, -1.0).astype(dtype)
    a1 = jnp.where(sgn > 0, alpha_a, alpha_c)
    kk = (alpha_a + alpha_c) * f
    amp = jnp.abs(eta0)
    explicit = (r_int <= 0) | (amp <= 0) | (i0 <= 0)
    amp_s = jnp.where(explicit, 1.0, amp)
    r_s = jnp.where(explicit, 1.0, r_int)
    i0_s = jnp.where(i0 > 0, i0, 1.0)
    log_r_i0 = jnp.log(r_s) + jnp.log(i0_s)

    def big_h(t):
        return log_r_i0 + a1 * f * t + jnp.log(-jnp.expm1(-kk * t)) - jnp.log(amp_s - t)

    def d_big_h(t):
        return a1 * f + kk / jnp.expm1(kk * t) + 1.0 / (amp_s - t)

    t = amp_s / (1.0 + r_s * i0_s * kk)  # linearised solution, strictly inside
    lo = jnp.zeros_like(t)
    hi = amp_s * jnp.ones_like(t)

    def step(_, state):
        t, lo, hi = state
        h = big_h(t)
        hi = jnp.where(h > 0, t, hi)
        lo = jnp.where(h <= 0, t, lo)
        trial = t - h / d_big_h(t)
        ok = jnp.isfinite(trial) & (trial >= lo) & (trial <= hi)
        t = jnp.where(ok, trial, 0.5 * (lo + hi))
        return t, lo, hi

    t, _, _ = jax.lax.fori_loop(0, _NEWTON_STEPS, step, (t, lo, hi))
    return jnp.where(explicit, eta0, sgn * t)


@jax.custom_jvp
def solve_overpotential(eta0, i0, r_int, temperature_K=298.15, alpha_a=0.5, alpha_c=0.5):
    """Overpotential η solving η = η0 − R_int i_BV(η)  (implicit BV with R_int).

    ``η0 = φ_s − φ_e − U`` is the driving voltage across the interface (V),
    ``i0`` the exchange current density (A/m²), ``r_int`` the interfacial resistance
    (Ω·m², ≥ 0). The residual h(η) = η − η0 + R_int i_BV(η) is strictly increasing
    (h' ≥ 1), so the root is unique and lies between 0 and η0. It is found with a
    fixed number (30) of bracketed Newton steps on the log-transformed residual
    described in ``_newton_bracketed``, started from the linearised solution; a step
    that leaves the current bracket is replaced by bisection.

    Differentiation uses the implicit function theorem (``custom_jvp``):
    dη = −(∂h/∂p · dp) / (∂h/∂η), so no Newton iterate is differentiated.
    Works elementwise on broadcastable arrays.
    """
    return _newton_bracketed(eta0, i0, r_int, temperature_K, alpha_a, alpha_c)


@solve_overpotential.defjvp
def _solve_overpotential_jvp(primals, tangents):
    eta = solve_overpotential(*primals)
    eta0, i0, r_int, temperature_K, alpha_a, alpha_c = primals

    def h_of_params(*p):
        return _residual(eta, *p)

    def h_of_eta(e):
        return _residual(e, eta0, i0, r_int, temperature_K, alpha_a, alpha_c)

    params = (eta0, i0, r_int, temperature_K, alpha_a, alpha_c)
    tangents = tuple(
        jnp.zeros_like(jnp.asarray(p, dtype=jnp.result_type(p, float)))
        if type(t) is jax.custom_derivatives.SymbolicZero or t is None
        else t
        for p, t in zip(params, tangents)
    )
    params = tuple(jnp.asarray(p, dtype=jnp.result_type(p, float)) for p in params)
    _, dh_dp = jax.jvp(h_of_params, params, tangents)
    _, dh_deta = jax.jvp(h_of_eta, (eta,), (jnp.ones_like(eta),))
    return eta, -dh_dp / dh_deta


def cathode_current_density(
    phi_s,
    phi_e,
    ocv,
    i0,
    r_int=0.0,
    temperature_K=298.15,
    alpha_a=0.5,
    alpha_c=0.5,
):
    """Interfacial current density at an active | ionic-conductor face (A/m²).

    i = i0 [exp(α_a F η/RT) − exp(−α_c F η/RT)], η = φ_s − φ_e − U − i R_int,
    positive = delithiation. ``ocv`` is U(x) in V (e.g. from :mod:`ssbx.kernels.ocv`).
    With ``r_int`` = 0 the evaluation is explicit (the Newton solve returns η0 in one
    step and its derivative is exact).

    Returns:
        (i, eta): current density (A/m²) and overpotential (V).
    """
    eta0 = jnp.asarray(phi_s) - jnp.asarray(phi_e) - jnp.asarray(ocv)
    eta = solve_overpotential(eta0, i0, r_int, temperature_K, alpha_a, alpha_c)
    i_kin = butler_volmer(eta, i0, temperature_K, alpha_a, alpha_c)
    # At the root i = i_BV(η) = (η0 − η)/R_int. Use whichever is better conditioned:
    # the kinetic form when R_int di/dη < 1, the ohmic form otherwise.
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    slope = i0 * f * (alpha_a * jnp.exp(alpha_a * f * eta) + alpha_c * jnp.exp(-alpha_c * f * eta))
    ohmic = r_int * slope > 1.0
    r_safe = jnp.where(ohmic, r_int, 1.0)
    i = jnp.where(ohmic, (eta0 - eta) / r_safe, i_kin)
    return i, eta


def lithium_metal_current_density(
    phi_s, phi_e, i0, r_int=0.0, temperature_K=298.15, alpha_a=0.5, alpha_c=0.5
):
    """Li-metal | electrolyte current density (A/m²), positive = stripping.

    Same Butler–Volmer form with U = 0 V vs Li/Li⁺ and a constant exchange current
    density ``i0`` (A/m²). Returns (i, eta).
    """
    return cathode_current_density(phi_s, phi_e, 0.0, i0, r_int, temperature_K, alpha_a, alpha_c)


def charge_transfer_resistance(i0, temperature_K=298.15, alpha_a=0.5, alpha_c=0.5):
    """Small-signal charge-transfer resistance R_ct = R T / (F i0 (α_a + α_c))  (Ω·m²).

    The inverse slope of :func:`butler_volmer` at η = 0; equals R T/(F i0) for
    α_a = α_c = 0.5 (see module docstring for the α convention).
    """
    return GAS_CONSTANT * temperature_K / (FARADAY * i0 * (alpha_a + alpha_c))


def interface_resistance_from_gap(gap_m, r0, g0_m):
    """R_int = R0 exp(g / g0) (Ω·m²): interfacial resistance growing with the local
    normal opening ``gap_m`` ≥ 0 (m) of a debonding interface (docs/physics.md §4, §9).
    ``r0`` is the bonded resistance (Ω·m²), ``g0_m`` the decay length (m)."""
    return r0 * jnp.exp(jnp.asarray(gap_m) / g0_m)
