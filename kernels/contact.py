"""Partial ionic contact of a particle surface as a continuous per-grain weight.

A polycrystalline particle exchanges Li only through the surface grains that touch
the ion conductor (the partial-contact case of docs/physics.md S1: 66.7 % vs 100 % of
the surface grains reactive). For an inverse study the binary mask r_g ∈ {0, 1} is
relaxed to a weight w_g ∈ [0, 1] per grain, w_g = σ(s_g) = 1/(1 + e^(−s_g)), which
multiplies the grain's reactive surface. Under galvanostatic control the particle's
total Li flow is fixed by the applied current, so the flux density is redistributed
over the weighted reactive area:

    A(w) = h^(d−1) Σ_v w_g(v) a_v,          j_v = w_g(v) · Ṅ / A(w),

with a_v the reactive area of voxel v in units of h² (all surface grains counted,
model.particle.ParticleGeometry.face_count) and Ṅ (mol/s, > 0 into the particle) the
applied Li flow. Then Σ_v j_v a_v h^(d−1) = Ṅ for every w, and for a binary w the
flux is the uniform j = Ṅ / A_reactive of the prescribed-flux model
(model.particle.galvanostatic_flux). The relaxation is the density approach of
topology optimisation (Bendsøe & Sigmund, *Topology Optimization: Theory, Methods and
Applications*, Springer 2003, ch. 1), with the binary-ness enforced by a penalty
(:func:`binarity_penalty`), as in their §1.5 continuation schemes.

Pure ``jax.numpy``; differentiable with respect to the weights and the flow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def contact_weights(logits):
    """w = σ(s) = 1 / (1 + e^(−s)) ∈ (0, 1), the relaxed reactive mask (dimensionless).

    Args:
        logits: unconstrained per-grain coordinates s (any shape).
    """
    return jax.nn.sigmoid(logits)


def weighted_reactive_area(voxel_weights, face_count, voxel_size_m, ndim: int):
    """A(w) = h^(d−1) Σ_v w_v a_v, m² (in 2D: m per metre of depth).

    Args:
        voxel_weights: per-voxel contact weight w_v (the weight of the voxel's grain).
        face_count: per-voxel reactive area a_v in units of h² (0 off the surface).
        voxel_size_m: voxel edge h, m.
        ndim: 2 or 3.
    """
    return jnp.sum(voxel_weights * face_count) * voxel_size_m ** (ndim - 1)


def redistributed_flux(voxel_weights, face_count, li_flow_mol_s, voxel_size_m, ndim: int):
    """Per-voxel flux density j_v = w_v Ṅ / A(w), mol/(m² s), conserving the total flow.

    Σ_v j_v a_v h^(d−1) = Ṅ for any weights with A(w) > 0 (galvanostatic control:
    the applied current fixes the particle's Li flow; the contact only decides where
    it enters). Use with kernels.diffusion.surface_flux_rate(j, face_count, ...).

    Args:
        voxel_weights: per-voxel contact weight w_v ∈ [0, 1].
        face_count: per-voxel reactive area a_v in units of h² (all candidate faces).
        li_flow_mol_s: applied Li flow into the particle Ṅ, mol/s (negative on
            delithiation; in 2D per metre of depth).
        voxel_size_m: voxel edge h, m.
        ndim: 2 or 3.
    """
    area = weighted_reactive_area(voxel_weights, face_count, voxel_size_m, ndim)
    return voxel_weights * li_flow_mol_s / area


def binarity_penalty(weights):
    """P(w) = mean_g w_g (1 − w_g) ∈ [0, 1/4], zero exactly at binary masks (dimensionless).

    The concave double-well penalty of intermediate densities (Bendsøe & Sigmund 2003,
    §1.5); raising its weight stage by stage (continuation) first lets the data place
    the weights and then pushes each to 0 or 1.
    """
    return jnp.mean(weights * (1.0 - weights))
