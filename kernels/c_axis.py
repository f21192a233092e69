"""Crystal c axes of transversely isotropic grains as unit vectors, and their quaternions.

For a layered oxide (NCM) the Li diffusivity is transversely isotropic about the
crystal c axis [001]: D1 = D2 (in the transition-metal layers) and D3 along c
(docs/physics.md §1; Van der Ven & Ceder, Electrochem. Solid-State Lett. 3, 301 (2000)).
With R the rotation crystal -> sample and c = R e_z,

    D = R diag(D1, D1, D3) Rᵀ = D1 I + (D3 − D1) c cᵀ,                      (1)

so the tensor depends on the grain orientation only through the axis c, and only
through c cᵀ: the rotation about c and the sign of c do not matter. A grain's
orientation for diffusion is therefore a point of the projective plane ℝP² (an axis),
not of SO(3).

Parameterisation used by the inverse problem (engine/inverse/orientations.py): an
unconstrained vector v ∈ ℝ³ \\ {0}, c = v/|v|. Unlike Euler angles it has no gimbal lock
(every axis is reached by a neighbourhood of vectors, and the map v -> c is smooth
away from v = 0, with a Jacobian of rank 2 everywhere); unlike a quaternion it carries
no meaningless in-plane rotation; c and −c giving the same D, it needs no constraint
on the sign.

The rollout takes quaternions, so :func:`c_axis_quaternion` builds the quaternion of
the shortest rotation taking e_z to c. For a unit c with c_z ≥ 0 it is

    q = (1 + c_z, −c_y, c_x, 0) / √(2 (1 + c_z))                             (2)

(half-angle form of the rotation by arccos c_z about e_z × c = (−c_y, c_x, 0)). Its
norm vanishes at the antipode c = −e_z, so c is first flipped into the upper
hemisphere (c -> sign(c_z) c, which (1) allows): the denominator is then ≥ √2 and the
map is smooth on each open hemisphere. The flip makes q jump across the equator, but
R diag(D1, D1, D3) Rᵀ is continuous and smooth there, because (1) depends only on
c cᵀ.
"""

from __future__ import annotations

import jax.numpy as jnp


def unit_axis(v):
    """c = v/|v| for (..., 3) vectors (dimensionless). ``v`` must be non-zero."""
    v = jnp.asarray(v)
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def upper_hemisphere(c):
    """The representative of the axis ±c with c_z ≥ 0 (c unchanged where c_z = 0)."""
    c = jnp.asarray(c)
    sign = jnp.where(c[..., 2:3] < 0, -1.0, 1.0).astype(c.dtype)
    return sign * c


def c_axis_quaternion(v):
    """Unit quaternion (w, x, y, z) whose rotation maps [001] to the axis of ``v``.

    Args:
        v: (..., 3) non-zero vectors (any length; the axis is v/|v|, sign ignored).

    Returns:
        (..., 4) unit quaternions, scalar first, of the shortest rotation taking e_z to
        ±v/|v| (the sign with non-negative z component), eq. (2) of the module
        docstring. Crystal -> sample, as kernels.rotations.quaternion_to_matrix.
    """
    c = upper_hemisphere(unit_axis(v))
    cx, cy, cz = c[..., 0], c[..., 1], c[..., 2]
    q = jnp.stack([1.0 + cz, -cy, cx, jnp.zeros_like(cz)], axis=-1)
    return q / jnp.sqrt(2.0 * (1.0 + cz))[..., None]


def axis_misorientation_deg(a, b):
    """Angle between the axes ±a and ±b, degrees in [0, 90] (sign of either ignored).

    arccos |â · b̂|, evaluated as atan2(|â × b̂|, |â · b̂|) for accuracy at small angles.
    """
    a = unit_axis(a)
    b = unit_axis(b)
    cross = jnp.linalg.norm(jnp.cross(a, b), axis=-1)
    dot = jnp.abs(jnp.sum(a * b, axis=-1))
    return jnp.degrees(jnp.arctan2(cross, dot))


def c_axis_of_quaternion(q):
    """The sample-frame c axis R e_z (third column of R) of (..., 4) quaternions."""
    q = jnp.asarray(q)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return jnp.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], axis=-1)
