"""Li|solid-electrolyte plating kinetics and the cell-scale current-focusing residual.

Pure array functions for scenario S3 (docs/current_focusing.md; kinetics as in docs/physics.md §4).

Interface kinetics (Butler–Volmer, Bard & Faulkner, *Electrochemical Methods*, 2nd ed.
(2001), §3.4; Newman & Thomas-Alyea, *Electrochemical Systems*, 3rd ed. (2004), ch. 8)::

    i(η) = i0 [exp(α_a F η / R T) − exp(−α_c F η / R T)]          (A/m²)

* Cathode particle | SE face, particle at a uniform potential φ_s with a fixed open-
  circuit potential U (fixed SOC during a short pulse): η_c = φ_s − U − φ_e = ψ − φ_e
  with ψ = φ_s − U. Positive i_c = delithiation (charge): Li⁺ enters the SE.
* Li metal | SE face, Li at φ_Li = 0 V (reference), U = 0 V vs Li/Li⁺:
  η_a = 0 − φ_e. Positive i_a = stripping; plating (charge of the cell) is i_a < 0.

Finite-volume residual (cell-centred, 2D, per unit depth, A/m)::

    R_k = Σ_faces g_kj (φ_k − φ_j) − h [n_c,k i_c(ψ − φ_k) + n_a,k i_a(−φ_k)]

with the harmonic face conductivities g (S/m, ``conduction.face_conductances``), the
voxel size h (m) and the numbers n_c,k / n_a,k of faces voxel k shares with an active
particle / with Li metal. The interface potential is taken at the SE voxel centre
(first order in h; the neglected half-voxel ohmic drop is i h / (2σ) ≈ 0.3 mV for
i = 100 A/m², h = 2 µm, σ = 0.3 S/m, ≪ R T / F = 25.7 mV).

Plated Li (Faraday's law): thickness δ = −i_a t V_m / F (m) with the molar volume of
Li V_m = 12.99 cm³/mol (M = 6.941 g/mol, ρ = 0.534 g/cm³; CRC Handbook of Chemistry
and Physics); δ < 0 means stripped Li.
"""

from __future__ import annotations

import jax.numpy as jnp

from .constants import FARADAY, GAS_CONSTANT

__all__ = [
    "LI_MOLAR_VOLUME",
    "bv_current",
    "bv_slope",
    "focusing_residual",
    "focusing_jacobian_diagonal",
    "plated_thickness",
    "plating_eigenstrain",
]

#: Molar volume of Li metal (m³/mol): M / ρ = 6.941e-3 / 534 (CRC Handbook).
LI_MOLAR_VOLUME = 6.941e-3 / 534.0


def bv_current(eta, i0, temperature_K, alpha_a=0.5, alpha_c=0.5):
    """Butler–Volmer current density (A/m²) for overpotential η (V), i0 in A/m²."""
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    return i0 * (jnp.exp(alpha_a * f * eta) - jnp.exp(-alpha_c * f * eta))


def bv_slope(eta, i0, temperature_K, alpha_a=0.5, alpha_c=0.5):
    """d i / d η (S/m²) of :func:`bv_current`; equals 1/R_ct at η = 0."""
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    return i0 * f * (alpha_a * jnp.exp(alpha_a * f * eta) + alpha_c * jnp.exp(-alpha_c * f * eta))


def focusing_residual(phi, psi, g, n_c, n_a, h, i0_c, i0_a, temperature_K, alpha_a=0.5, alpha_c=0.5):
    """Residual R (A/m per unit depth) of the SE potential problem, see module docstring.

    Args:
        phi: (nx, nz) electrolyte potential φ_e (V); only SE voxels matter.
        psi: scalar ψ = φ_s − U (V) of the active particles.
        g: tuple of face conductances (S/m) from ``conduction.face_conductances``.
        n_c, n_a: (nx, nz) counts of active-particle / Li-metal faces per SE voxel.
        h: voxel size (m). i0_c, i0_a: exchange current densities (A/m²).

    Returns:
        (R, i_c, i_a): residual per voxel, cathode and Li face current densities (A/m²).
    """
    i_c = bv_current(psi - phi, i0_c, temperature_K, alpha_a, alpha_c)
    i_a = bv_current(-phi, i0_a, temperature_K, alpha_a, alpha_c)
    out = jnp.zeros_like(phi)
    for a, ga in enumerate(g):
        flux = ga * (phi - jnp.roll(phi, -1, axis=a))
        out = out + flux - jnp.roll(flux, 1, axis=a)
    return out - h * (n_c * i_c + n_a * i_a), i_c, i_a


def focusing_jacobian_diagonal(phi, psi, n_c, n_a, h, i0_c, i0_a, temperature_K, alpha_a=0.5, alpha_c=0.5):
    """Interface part of ∂R/∂φ (diagonal, S/m) and ∂R/∂ψ (= −d_c, S/m).

    Returns (d_total, d_c) with d_c = h n_c i_c'(η_c) and d_total = d_c + h n_a i_a'(η_a).
    """
    d_c = h * n_c * bv_slope(psi - phi, i0_c, temperature_K, alpha_a, alpha_c)
    d_a = h * n_a * bv_slope(-phi, i0_a, temperature_K, alpha_a, alpha_c)
    return d_c + d_a, d_c


def plated_thickness(i_li, time_s, molar_volume=LI_MOLAR_VOLUME):
    """Plated Li thickness δ = −i_Li t V_m / F (m); i_Li < 0 is plating (A/m²)."""
    return -i_li * time_s * molar_volume / FARADAY


def plating_eigenstrain(thickness, layer_thickness):
    """Uniaxial eigenstrain ε* = δ / ℓ normal to the Li|SE face of a layer of thickness ℓ.

    The plated volume δ per unit interface area is inserted into an SE layer of
    thickness ℓ (one voxel) as a stress-free stretch along the interface normal
    (the layer would thicken by exactly δ if unconstrained).
    """
    return thickness / layer_thickness
