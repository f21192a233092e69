r"""Bilinear cohesive law and its "laminate voxel" realisation (pure jnp functions).

Cohesive law (mixed mode, equal mode properties)
------------------------------------------------
An interface with unit normal n (pointing from the active particle into the ion
conductor) carries an opening vector g (m): the displacement of the conductor side
relative to the particle side. Split g_n = g·n (normal opening, > 0 = separation) and
g_t = g − g_n n (sliding). The effective opening is

    λ = √( ⟨g_n⟩₊² + |g_t|² ),                                                  (1)

with ⟨·⟩₊ the positive part, so compression does not drive damage. The bilinear
law with initial (penalty) stiffness K0 (Pa/m), strength σc (Pa, the same in
normal and shear) and fracture energy Gc (J/m², the same in mode I and II) has

    δ0 = σc / K0   (onset opening),     δf = 2 Gc / σc   (final opening),       (2)

and the scalar damage as a function of the history κ = max_τ≤t λ(τ)

    d(κ) = 0                                 for κ ≤ δ0,
    d(κ) = δf (κ − δ0) / (κ (δf − δ0))       for δ0 < κ < δf,                   (3)
    d(κ) = 1                                 for κ ≥ δf.

The traction is T = K_s g with the secant stiffness tensor

    K_s = K_n n⊗n + K_t (I − n⊗n),   K_t = (1 − d) K0,
    K_n = (1 − d) K0  if g_n ≥ 0,     K_n = K0 if g_n < 0,                       (4)

i.e. no damage and (up to the penalty K0) no interpenetration in compression.
Under monotonic opening the traction magnitude rises linearly to σc at λ = δ0 and
falls linearly to 0 at λ = δf, so the work of separation is ½ σc δf = Gc per unit
area. Unloading at fixed κ follows the secant line T = (1 − d(κ)) K0 g back to the
origin. This is the bilinear mixed-mode law of Camanho & Dávila, NASA/TM-2002-211737
(2002) with G_Ic = G_IIc (so the Benzeggagh–Kenane mixed-mode criterion reduces to
the mode-independent δ0, δf above); the penalty choice K0 ≫ E/ℓ follows Turon et
al., Eng. Fract. Mech. 74, 1665 (2007).

Smoothing: ⟨g_n⟩₊ in (1) is replaced by the softplus w·log(1 + exp(g_n/w)) with
w = ``smoothing`` · δ0 (default 1e-2 · δ0), and the square root by √(· + (w·1e-3)²)
so that λ has a gradient everywhere (including g = 0 and the sign change of g_n).
The softplus overestimates ⟨g_n⟩₊ by at most w·ln 2 (at g_n = 0), i.e. 0.7 % of δ0
with the default; in compression (g_n ≪ −w) it is exponentially small. The damage
(3) keeps its kinks at δ0 and δf (no gradient issue except exactly at them), and
the compression switch in (4) is a discrete active set, decided by the solver; its
gradient is that of the converged active set (exact away from g_n = 0).

Laminate voxels
---------------
A voxel of size h whose bulk stiffness is C (eigenstrain ε*) and that contains a
cohesive layer of normal n is a rank-one laminate of the bulk and a layer of
vanishing thickness and stiffness K_s (Kabel, Merkert & Schneider, CMAME 294, 168
(2015) for laminate voxels; Ernesti & Schneider, Comput. Mech. (2023) for the
weak-interface limit): with a = g/h,

    ε = ε_b + sym(a ⊗ n),   σ = C : (ε_b − ε*),   σ n = K_s g   (traction continuity)

⇒  a = (A + h K_s)⁻¹ (C:(ε − ε*)) n,   A_ik = n_j C_ijkl n_l (acoustic tensor),  (5)

    σ = C_lam : (ε − ε*),   C_lam = C − (C n) (A + h K_s)⁻¹ (n C),               (6)

(C n)_ijp = C_ijpq n_q. C_lam is symmetric and positive semi-definite for K_s ⪰ 0
and ⪯ C (a series combination only softens), so the FFT-Galerkin CG operator stays
symmetric positive definite for every secant state; K_s → ∞ recovers C. The layer's
compliance is 1/K_s per unit area whatever h is, so the opening g = h a and the work
Gc per unit area do not depend on the voxel size. If the voxel holds a layer of area
A_l ≠ h² (a staircase edge or corner standing for an inclined surface), h is
replaced by the spacing h³/A_l (the layer area per unit volume is A_l/h³).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "bilinear_envelope",
    "damage",
    "effective_opening",
    "final_opening",
    "laminate_opening",
    "laminate_stiffness",
    "normal_opening",
    "onset_opening",
    "positive_part",
    "secant_stiffness",
    "traction",
    "update_history",
    "voigt_to_tensor4",
]

# Voigt index of the tensor pair (i, j), order (xx, yy, zz, yz, xz, xy)
_VI = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])
_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def onset_opening(strength, penalty_stiffness):
    """δ0 = σc / K0 (m): effective opening at which damage starts (σc in Pa, K0 in Pa/m)."""
    return jnp.asarray(strength) / jnp.asarray(penalty_stiffness)


def final_opening(strength, fracture_energy):
    """δf = 2 Gc / σc (m): effective opening at full separation (Gc in J/m², σc in Pa)."""
    return 2.0 * jnp.asarray(fracture_energy) / jnp.asarray(strength)


def positive_part(v, width):
    """Smooth ⟨v⟩₊ = w·log(1 + exp(v/w)) (softplus of width w, same unit as v).

    Differs from max(v, 0) by at most w·ln 2 (at v = 0); w must be > 0.
    """
    w = jnp.asarray(width)
    return w * jax.nn.softplus(jnp.asarray(v) / w)


def normal_opening(g, n):
    """g_n = g·n; g, n of shape (3, ...) (component axis first), result (...)."""
    return jnp.sum(jnp.asarray(g) * jnp.asarray(n), axis=0)


def effective_opening(g, n, strength, penalty_stiffness, smoothing=1e-2):
    """λ = √(⟨g_n⟩₊² + |g_t|²) (m), eq. (1), with the documented smoothing.

    Args:
        g: (3, ...) opening vector (m).
        n: (3, ...) unit normal (particle → conductor).
        strength, penalty_stiffness: σc (Pa), K0 (Pa/m), fix δ0 and the width
            w = smoothing·δ0 of the softplus.
        smoothing: relative softplus width (dimensionless, > 0).
    """
    g = jnp.asarray(g)
    n = jnp.asarray(n)
    w = smoothing * onset_opening(strength, penalty_stiffness)
    gn = normal_opening(g, n)
    gt2 = jnp.maximum(jnp.sum(g * g, axis=0) - gn * gn, 0.0)
    gp = positive_part(gn, w)
    return jnp.sqrt(gp * gp + gt2 + (1e-3 * w) ** 2)


def damage(history, strength, fracture_energy, penalty_stiffness):
    """Bilinear damage d(κ) ∈ [0, 1], eq. (3); κ = history (max effective opening, m)."""
    k = jnp.asarray(history)
    d0 = onset_opening(strength, penalty_stiffness)
    df = final_opening(strength, fracture_energy)
    ks = jnp.maximum(k, d0)  # safe denominator; d = 0 below δ0 anyway
    d = df * (ks - d0) / (ks * (df - d0))
    return jnp.clip(d, 0.0, 1.0)


def update_history(history, g, n, strength, penalty_stiffness, smoothing=1e-2):
    """κ_new = max(κ, λ(g)) (m): irreversible history, called once per accepted step."""
    lam = effective_opening(g, n, strength, penalty_stiffness, smoothing)
    return jnp.maximum(jnp.asarray(history), lam)


def secant_stiffness(compression, history, strength, fracture_energy, penalty_stiffness):
    """Secant normal and tangential stiffness (K_n, K_t) in Pa/m, eq. (4).

    Args:
        compression: bool (...) — True where the normal opening is negative
            (closed contact): K_n = K0, no damage in the normal direction.
        history: κ (...), m.
    """
    k0 = jnp.asarray(penalty_stiffness)
    d = damage(history, strength, fracture_energy, penalty_stiffness)
    kt = (1.0 - d) * k0
    kn = jnp.where(compression, k0 * jnp.ones_like(kt), kt)
    return kn, kt


def traction(g, n, history, strength, fracture_energy, penalty_stiffness):
    """T = K_s g (Pa), eq. (4), with the damage of the given history κ.

    For the bilinear envelope under monotonic loading pass the updated history
    max(κ, λ(g)); with the frozen history of a step this is the secant traction
    that the laminate solve transmits.
    """
    g = jnp.asarray(g)
    n = jnp.asarray(n)
    gn = normal_opening(g, n)
    kn, kt = secant_stiffness(gn < 0, history, strength, fracture_energy, penalty_stiffness)
    return kt * g + (kn - kt) * gn * n


def bilinear_envelope(lam, strength, fracture_energy, penalty_stiffness):
    """Traction magnitude on the monotonic bilinear curve at effective opening λ (Pa)."""
    lam = jnp.asarray(lam)
    d0 = onset_opening(strength, penalty_stiffness)
    df = final_opening(strength, fracture_energy)
    s = jnp.asarray(strength)
    up = penalty_stiffness * lam
    down = s * (df - lam) / (df - d0)
    return jnp.where(lam <= d0, up, jnp.clip(down, 0.0, None))


# ----------------------------------------------------------------------------------
# laminate voxels
# ----------------------------------------------------------------------------------


def voigt_to_tensor4(c_voigt):
    """(..., 6, 6) Voigt stiffness (engineering shear) → (..., 3, 3, 3, 3) C_ijkl."""
    c = jnp.asarray(c_voigt)
    # plain integer indexing only (no index arrays: safe under x64 toggling in jit)
    return jnp.stack([jnp.stack([jnp.stack([jnp.stack(
        [c[..., int(_VI[i, j]), int(_VI[k, m])] for m in range(3)], -1)
        for k in range(3)], -2) for j in range(3)], -3) for i in range(3)], -4)


_PI = np.array([p[0] for p in _PAIRS])
_PJ = np.array([p[1] for p in _PAIRS])


def _tensor4_to_voigt(c4):
    return jnp.stack([jnp.stack([c4[..., i, j, k, m] for k, m in _PAIRS], -1)
                      for i, j in _PAIRS], -2)


def _layer_operator(c4, n, k_n, k_t, voxel_size):
    """(C n) and (A + h K_s)⁻¹ for (M, ...) batches; n (M, 3)."""
    cn = jnp.einsum("mijpq,mq->mijp", c4, n)  # (C n)_ijp
    a = jnp.einsum("mj,mijp->mip", n, cn)  # A_ip = n_j C_ijpq n_q
    nn = n[:, :, None] * n[:, None, :]
    eye = jnp.eye(3, dtype=n.dtype)
    ks = k_n[:, None, None] * nn + k_t[:, None, None] * (eye - nn)
    hv = jnp.broadcast_to(jnp.asarray(voxel_size, n.dtype), n.shape[:1])
    minv = jnp.linalg.inv(a + hv[:, None, None] * ks)
    return cn, minv


@jax.jit
def laminate_stiffness(c_voigt, n, k_n, k_t, voxel_size):
    """C_lam = C − (C n)(A + h K_s)⁻¹(n C), eq. (6), as (M, 6, 6) Voigt (Pa).

    Args:
        c_voigt: (M, 6, 6) bulk Voigt stiffness of the host voxels (Pa).
        n: (M, 3) unit layer normals.
        k_n, k_t: (M,) secant normal / tangential layer stiffness (Pa/m).
        voxel_size: layer spacing h (m): scalar, or (M,) (h / area factor when a
            voxel stands for more than one face of a staircase).
    """
    c_voigt = jnp.asarray(c_voigt)
    c4 = voigt_to_tensor4(c_voigt)
    cn, minv = _layer_operator(c4, jnp.asarray(n, c_voigt.dtype), k_n, k_t, voxel_size)
    corr = jnp.einsum("mijp,mpr,mklr->mijkl", cn, minv, cn)
    out = _tensor4_to_voigt(c4 - corr)
    return 0.5 * (out + jnp.swapaxes(out, -1, -2))


@jax.jit
def laminate_opening(c_voigt, n, k_n, k_t, voxel_size, elastic_strain):
    """Layer opening g = h (A + h K_s)⁻¹ (C:(ε − ε*)) n, eq. (5), (M, 3) in m.

    Args:
        elastic_strain: (M, 6) voxel-average ε − ε* in tensor components
            (xx, yy, zz, yz, xz, xy), dimensionless.
    """
    c_voigt = jnp.asarray(c_voigt)
    n = jnp.asarray(n, c_voigt.dtype)
    e = jnp.asarray(elastic_strain)
    eng = e * jnp.asarray([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], e.dtype)
    tau_v = jnp.einsum("mij,mj->mi", c_voigt, eng)  # C:(ε − ε*) in Voigt order
    tau = jnp.stack([jnp.stack([tau_v[:, int(_VI[i, j])] for j in range(3)], -1)
                     for i in range(3)], -2)  # (M, 3, 3)
    c4 = voigt_to_tensor4(c_voigt)
    _, minv = _layer_operator(c4, n, k_n, k_t, voxel_size)
    tn = jnp.einsum("mrs,ms->mr", tau, n)
    hv = jnp.broadcast_to(jnp.asarray(voxel_size, n.dtype), n.shape[:1])
    return hv[:, None] * jnp.einsum("mpr,mr->mp", minv, tn)
