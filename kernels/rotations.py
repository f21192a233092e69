"""Grain orientations: unit quaternions, rotation matrices and rotated tensors.

Convention (docs/physics.md §1): a grain's orientation is a unit quaternion q = (w, x, y, z),
scalar first. Its rotation matrix R maps crystal coordinates to sample coordinates,
so the columns of R are the crystal axes [100], [010], [001] written in the sample
frame, and a crystal-frame tensor T_c becomes T = R T_c Rᵀ in the sample frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Contractions in full float32: on Ampere/Hopper GPUs XLA's default precision contracts
# float32 in TF32 (about 1e-3 relative), which would perturb tensors and solver residuals.
HIGHEST = jax.lax.Precision.HIGHEST


def quaternion_to_matrix(q):
    """Rotation matrices from unit quaternions.

    Args:
        q: (..., 4) quaternions (w, x, y, z). They are normalised here, so any
            non-zero quaternion is accepted.

    Returns:
        (..., 3, 3) proper rotation matrices R (det R = +1).
    """
    q = jnp.asarray(q)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r00 = 1 - 2 * (y * y + z * z)
    r01 = 2 * (x * y - w * z)
    r02 = 2 * (x * z + w * y)
    r10 = 2 * (x * y + w * z)
    r11 = 1 - 2 * (x * x + z * z)
    r12 = 2 * (y * z - w * x)
    r20 = 2 * (x * z - w * y)
    r21 = 2 * (y * z + w * x)
    r22 = 1 - 2 * (x * x + y * y)
    rows = [
        jnp.stack([r00, r01, r02], axis=-1),
        jnp.stack([r10, r11, r12], axis=-1),
        jnp.stack([r20, r21, r22], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def quaternion_multiply(a, b):
    """Hamilton product a ⊗ b of (..., 4) quaternions; R(a ⊗ b) = R(a) R(b)."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return jnp.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def axis_angle_quaternion(axis, angle_rad):
    """Quaternion of a rotation by ``angle_rad`` about ``axis`` (need not be unit)."""
    axis = jnp.asarray(axis, dtype=jnp.result_type(float))
    axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
    half = 0.5 * jnp.asarray(angle_rad)
    return jnp.concatenate([jnp.cos(half)[..., None], jnp.sin(half)[..., None] * axis], axis=-1)


def rotate_principal_tensor(rotations, principal):
    """Second-order tensors T = R diag(p) Rᵀ for each rotation.

    Args:
        rotations: (n, 3, 3) rotation matrices (crystal -> sample).
        principal: (3,) or (n, 3) principal values along the crystal axes
            [100], [010], [001] (e.g. diffusivities in m²/s or chemical
            expansion coefficients per unit normalised Li content).

    Returns:
        (n, 3, 3) symmetric tensors in the sample frame.
    """
    principal = jnp.broadcast_to(jnp.asarray(principal), rotations.shape[:-1])
    return jnp.einsum("nik,nk,njk->nij", rotations, principal, rotations, precision=HIGHEST)
